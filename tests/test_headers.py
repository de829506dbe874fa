"""tracer.host.headers: preference order, Debian's split trees, the merged view, bcc for real."""

from __future__ import annotations

import os

import pytest

from analysis.errors import TracerError
from tracer.host import headers as hdr
from tracer.host.kernel import is_root


def write(path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def debian_pair(src, version: str, flavour: str = "amd64", with_common: bool = True, with_flavour: bool = True):
    """A miniature of Debian's linux-headers-VERSION-{common,FLAVOUR}, with a shared kbuild."""
    kbuild = src.parent / "lib" / f"linux-kbuild-{version}" / "scripts"
    write(kbuild / "basic" / "fixdep", "kbuild")
    common = src / f"linux-headers-{version}-common"
    flavoured = src / f"linux-headers-{version}-{flavour}"
    if with_common:
        write(common / "Makefile", "common Makefile")
        write(common / "include" / "linux" / "sched.h", "common sched.h")
        write(common / "include" / "linux" / "both.h", "common both.h")
        write(common / "arch" / "x86" / "include" / "asm" / "ptrace.h", "common ptrace.h")
        write(common / "conflict" / "inside.h", "common dir")
        (common / "scripts").symlink_to(os.path.relpath(kbuild, common))
    if with_flavour:
        write(flavoured / "Makefile", f"{flavour} Makefile")
        write(flavoured / ".config", "CONFIG_X=y")
        write(flavoured / "include" / "linux" / "both.h", f"{flavour} both.h")
        write(flavoured / "include" / "generated" / "autoconf.h", "generated")
        write(flavoured / "arch" / "x86" / "include" / "generated" / "asm" / "x.h", "generated asm")
        write(flavoured / "conflict", f"{flavour} file")
        (flavoured / "scripts").symlink_to(os.path.relpath(kbuild, flavoured))
    return common, flavoured


def snapshot(root) -> dict[str, tuple]:
    """Every path under root with what it is and holds: to prove the sources are untouched."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            link = os.readlink(p) if os.path.islink(p) else None
            seen[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, link)
    return seen


@pytest.fixture
def fake(tmp_path):
    src = tmp_path / "usr" / "src"
    src.mkdir(parents=True)
    modules = tmp_path / "lib" / "modules"
    modules.mkdir(parents=True)
    return {"src": src, "modules": modules, "cache": tmp_path / "cache", "root": tmp_path}


def resolve(fake, **kw):
    return hdr.resolve_headers(
        fake["cache"],
        release=kw.pop("release", "6.18.44-test"),
        machine=kw.pop("machine", "x86_64"),
        environ=kw.pop("environ", {}),
        modules_root=str(fake["modules"]),
        src_root=str(fake["src"]),
    )


def test_merged_view_follows_the_merge_rules(fake):
    debian_pair(fake["src"], "6.1.0-56")
    before = snapshot(fake["root"] / "usr")
    found = resolve(fake)
    view = fake["cache"] / "linux-headers-6.1.0-56-amd64"
    assert found.path == str(view) and found.env == {"BCC_KERNEL_SOURCE": str(view)}
    read = lambda rel: (view / rel).read_text()  # noqa: E731
    assert read("include/linux/sched.h") == "common sched.h"  # one side only
    assert read("include/generated/autoconf.h") == "generated"
    assert read("arch/x86/include/asm/ptrace.h") == "common ptrace.h"  # merged three levels down
    assert read("arch/x86/include/generated/asm/x.h") == "generated asm"
    assert read("include/linux/both.h") == "amd64 both.h"  # both sides: the flavour wins
    assert read("Makefile") == "amd64 Makefile"
    assert read("conflict") == "amd64 file"  # a file against a directory: the flavour wins
    # Both scripts links reach one kbuild: one link, not a merged copy, and it resolves.
    assert (view / "scripts").is_symlink() and read("scripts/basic/fixdep") == "kbuild"
    # Directories in both are real directories; everything else is a link.
    assert not (view / "include").is_symlink() and (view / "include" / "linux" / "sched.h").is_symlink()
    assert snapshot(fake["root"] / "usr") == before
    assert "Debian linux-headers-6.1.0-56" in found.description and "no headers for 6.18.44-test" in found.description


def test_newest_complete_version_wins(fake):
    debian_pair(fake["src"], "6.1.0-56")
    debian_pair(fake["src"], "6.12.38+deb12")
    debian_pair(fake["src"], "6.9.0-1")
    debian_pair(fake["src"], "6.16.0-1", with_flavour=False)  # newer but incomplete
    assert resolve(fake).path.endswith("linux-headers-6.12.38+deb12-amd64")


def test_other_flavours_and_arches_are_ignored(fake):
    debian_pair(fake["src"], "6.12.38+deb12", flavour="cloud-amd64")
    debian_pair(fake["src"], "6.1.0-56", flavour="arm64")
    with pytest.raises(TracerError) as err:
        resolve(fake)
    assert "no kernel headers for 6.18.44-test" in str(err.value) and "install linux-headers-amd64" in str(err.value)
    assert resolve(fake, machine="aarch64").path.endswith("linux-headers-6.1.0-56-arm64")


def test_missing_flavour_names_what_was_found(fake):
    debian_pair(fake["src"], "6.1.0-56", with_flavour=False)
    with pytest.raises(TracerError, match=r"found linux-headers-6\.1\.0-56-common without its -amd64 half"):
        resolve(fake)


def test_nothing_installed(fake):
    with pytest.raises(TracerError) as err:
        resolve(fake)
    assert str(err.value) == (
        "no kernel headers for 6.18.44-test; install linux-headers-amd64 (Debian) or linux-headers-6.18.44-test"
    )


def test_running_kernels_own_headers_come_first(fake):
    debian_pair(fake["src"], "6.1.0-56")
    build = fake["modules"] / "6.18.44-test" / "build"
    build.mkdir(parents=True)
    found = resolve(fake)
    assert found.path == str(build) and found.env == {}
    assert not fake["cache"].exists()


def test_user_choice_is_respected_and_checked(fake, tmp_path):
    (fake["modules"] / "6.18.44-test" / "build").mkdir(parents=True)
    mine = tmp_path / "my-headers"
    mine.mkdir()
    found = resolve(fake, environ={"BCC_KERNEL_SOURCE": str(mine)})
    assert found.path == str(mine) and "BCC_KERNEL_SOURCE" in found.description
    with pytest.raises(TracerError, match="BCC_KERNEL_SOURCE=.* is not a directory"):
        resolve(fake, environ={"BCC_KERNEL_SOURCE": str(tmp_path / "absent")})


def test_view_is_reused_then_rebuilt_when_sources_change(fake):
    common, flavoured = debian_pair(fake["src"], "6.1.0-56")
    view = fake["cache"] / "linux-headers-6.1.0-56-amd64"
    resolve(fake)
    first = os.stat(view).st_ino
    resolve(fake)
    assert os.stat(view).st_ino == first  # current: not rebuilt
    write(flavoured / "include" / "generated" / "new.h", "new")  # changes the flavour dir's mtime
    write(flavoured / "newfile", "x")
    resolve(fake)
    assert os.stat(view).st_ino != first
    assert (view / "newfile").read_text() == "x"
    # A file added deep inside a directory both trees have: also a rebuild.
    second = os.stat(view).st_ino
    write(common / "include" / "linux" / "added.h", "added")
    resolve(fake)
    assert os.stat(view).st_ino != second and (view / "include" / "linux" / "added.h").read_text() == "added"
    # The rebuild left no temporary or stale directories beside the view.
    assert sorted(p.name for p in fake["cache"].iterdir()) == [view.name]


def test_a_foreign_directory_in_the_cache_is_replaced_not_merged(fake):
    debian_pair(fake["src"], "6.1.0-56")
    view = fake["cache"] / "linux-headers-6.1.0-56-amd64"
    write(view / "leftover.h", "old")
    resolve(fake)
    assert not (view / "leftover.h").exists() and (view / "Makefile").exists()


def test_apply_exports_env(fake, monkeypatch):
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "")  # so that monkeypatch restores it afterwards
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    debian_pair(fake["src"], "6.1.0-56")
    found = resolve(fake)
    hdr.apply(found)
    assert os.environ["BCC_KERNEL_SOURCE"] == found.path


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert hdr.default_cache_dir() == tmp_path / "forktrace" / "headers"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hdr.default_cache_dir() == tmp_path / "home" / ".cache" / "forktrace" / "headers"


# -- for real: bcc compiles and loads with what resolve_headers() gives ----------------------

RAW_TP_PROGRAM = b"RAW_TRACEPOINT_PROBE(sched_process_fork) { return 0; }"


def _bcc():
    try:
        from bcc import BPF
    except ImportError as err:
        pytest.skip(f"cannot import bcc ({err}): install python3-bpfcc")
    if not is_root():
        pytest.skip("loading BPF programs needs root")
    return BPF


@pytest.mark.bpf
def test_bcc_loads_a_program_with_the_resolved_headers(tmp_path, monkeypatch):
    BPF = _bcc()
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    found = hdr.resolve_headers(tmp_path / "cache")
    for name, value in found.env.items():
        monkeypatch.setenv(name, value)
    bpf = BPF(text=RAW_TP_PROGRAM)
    bpf.cleanup()


@pytest.mark.bpf
def test_one_debian_tree_alone_does_not_compile(monkeypatch):
    """The reason the merged view exists; if this ever passes, the view may be unnecessary."""
    BPF = _bcc()
    found, _notes = hdr.find_debian_headers("/usr/src", hdr.debian_flavour(os.uname().machine) or "amd64")
    if found is None or os.path.isdir(f"/lib/modules/{os.uname().release}/build"):
        pytest.skip("no split Debian headers in use on this host")
    for tree in (found.common, found.flavoured):
        monkeypatch.setenv("BCC_KERNEL_SOURCE", tree)
        with pytest.raises(Exception, match="Failed to compile"):
            BPF(text=RAW_TP_PROGRAM)
