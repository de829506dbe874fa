"""Where `tracer record` writes: an existing file kept as FILE.old, a failed write saved elsewhere.

Without BPF: save_recording() and prepare_output() are what record calls
after and before tracing; the full disk is a real one (a small tmpfs).
"""

from __future__ import annotations

import tempfile

import pytest

from analysis.errors import TracerError, UsageError
from analysis.recording import load_recording
from recordings import default_metadata, fork_rows
from tracer.record.output import MIN_FREE_BYTES, prepare_output, save_recording


def test_existing_output_is_kept_as_old(tmp_path):
    path = tmp_path / "rec.parquet"
    path.write_text("an older recording")
    said = []
    rows = fork_rows(5)
    assert prepare_output(path).path == path
    assert save_recording(path, rows, default_metadata(rows), said.append) == path
    assert len(load_recording(path).forks) == 5
    assert (tmp_path / "rec.parquet.old").read_text() == "an older recording"
    assert said == ["kept the previous rec.parquet as rec.parquet.old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.parquet", "rec.parquet.old"]


def test_an_existing_old_is_never_replaced_even_read_only(tmp_path):
    # Issue 19 case 7: perf keeps one .old; a kept recording is never dropped: the next is numbered.
    path = tmp_path / "rec.parquet"
    path.write_text("the newest")
    (tmp_path / "rec.parquet.old").write_text("the one before")
    (tmp_path / "rec.parquet.old").chmod(0o444)
    said = []
    rows = fork_rows(3)
    save_recording(prepare_output(path), rows, default_metadata(rows), said.append)
    assert (tmp_path / "rec.parquet.old").read_text() == "the one before"
    assert (tmp_path / "rec.parquet.old.1").read_text() == "the newest"
    assert said == ["kept the previous rec.parquet as rec.parquet.old.1"]
    for i in range(2, 10):
        (tmp_path / f"rec.parquet.old.{i}").write_text(str(i))
    with pytest.raises(UsageError, match=r"remove some kept files"):
        prepare_output(path)


def test_a_backup_name_too_long_is_named_as_such(tmp_path):
    # Issue 19 case 17: a 255-byte name is fine; its .old is what does not fit, and the message says so.
    path = tmp_path / ("r" * 247 + ".parquet")
    path.write_text("old")
    with pytest.raises(UsageError) as err:
        prepare_output(path)
    message = str(err.value)
    assert "as rrrr" in message and ".parquet.old: that name would be 259 bytes, over the 255" in message


def test_name_near_name_max_is_written(tmp_path):
    # The temporary name does not grow with the output's: 248 characters fit.
    path = tmp_path / ("r" * 240 + ".parquet")
    rows = fork_rows(3)
    save_recording(prepare_output(path), rows, default_metadata(rows), print)
    assert len(load_recording(path).forks) == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_backup_that_is_not_a_file_is_refused_before_tracing(tmp_path):
    path = tmp_path / "rec.parquet"
    path.write_text("old")
    (tmp_path / "rec.parquet.old").mkdir()
    (tmp_path / "rec.parquet.old.1").symlink_to("/etc/passwd")
    for i in range(2, 10):
        (tmp_path / f"rec.parquet.old.{i}").mkdir()
    with pytest.raises(UsageError, match="rec.parquet.old"):
        prepare_output(path)


@pytest.fixture
def small_fs(tmpfs):
    """A 2m tmpfs: a disk that can be filled."""
    return tmpfs("2m")


def fill(directory) -> None:
    with open(directory / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass


def test_full_disk_keeps_the_recording_in_a_fallback_and_says_where(small_fs, tmp_path, monkeypatch):
    fallback_dir = tmp_path / "fallback"
    fallback_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback_dir))
    output = prepare_output(small_fs / "rec.parquet")  # room enough before tracing...
    path = output.path
    fill(small_fs)  # ...then the disk fills during the run
    rows = fork_rows(2000, vmas=400)
    with pytest.raises(TracerError) as err:
        save_recording(output, rows, default_metadata(rows), print)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "No space left" in message
    (saved,) = fallback_dir.iterdir()
    assert str(saved) in message
    # An unpredictable name (case 4): not one another user could plant beforehand.
    assert saved.name.startswith("forktrace-saved-") and len(saved.name) > len("forktrace-saved-") + 30
    assert len(load_recording(saved).forks) == 2000
    # Nothing half-written left behind on the full disk.
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]
    # And a disk this full is refused before the next run starts.
    with pytest.raises(TracerError, match="KiB free"):
        prepare_output(small_fs / "next.parquet")
    assert MIN_FREE_BYTES > 0
