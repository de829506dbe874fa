"""tracer.host.kallsyms and tracer.host.kernel: fake /proc files, then this host's facts."""

from __future__ import annotations

import gzip
import os

import pytest

import kernel_truth

from analysis.errors import TracerError
from tracer.host import kernel
from tracer.host.kallsyms import symbol_names, symbols_present

FAKE_KALLSYMS = """\
ffffffff815f3170 T dup_mmap
ffffffff821ca6d0 T __mt_dup
ffffffff821d2ee0 T mas_store_gfp
ffffffff821d3000 t mas_wr_store_entry.isra.0
ffffffff821d4000 t mas_wr_store_entry.cold
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0300000 t nf_hook_slow\t[nf_tables]
0000000000000000 A fixed_percpu_data
"""


@pytest.fixture
def kallsyms(tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text(FAKE_KALLSYMS)
    return str(path)


def test_symbols_present_exact_clones_and_modules(kallsyms):
    found = symbols_present(["dup_mmap", "mas_store", "mas_wr_store_entry", "nf_hook_slow", "undo_dup_mmap"], kallsyms)
    # mas_store is absent although mas_store_gfp exists: prefixes do not count.
    assert found == {
        "dup_mmap": True,
        "mas_store": False,
        "mas_wr_store_entry": True,
        "nf_hook_slow": True,
        "undo_dup_mmap": False,
    }


def test_symbol_names_lists_every_clone(kallsyms):
    names = symbol_names(["mas_wr_store_entry", "__mt_dup"], kallsyms)
    assert names == {
        "mas_wr_store_entry": ["mas_wr_store_entry.isra.0", "mas_wr_store_entry.cold"],
        "__mt_dup": ["__mt_dup"],
    }


def test_this_host_kallsyms():
    names = ["dup_mmap", "__mt_dup", "mas_store", "undo_dup_mmap", "copy_process"]
    found = symbols_present(names)
    assert found == {name: kernel_truth.in_kallsyms(name) for name in names}
    assert found["copy_process"]  # fork's own entry point is never inlined away


# -- mounts, tracefs, lockdown ---------------------------------------------------------


def write_mounts(tmp_path, *lines: str) -> str:
    path = tmp_path / "mounts"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_mount_points_decode_octal_escapes(tmp_path):
    mounts = write_mounts(tmp_path, "nodev /mnt/my\\040trace tracefs rw 0 0", "proc /proc proc rw 0 0")
    assert kernel.mount_points("tracefs", mounts) == ["/mnt/my trace"]
    assert kernel.mount_points("debugfs", mounts) == []


def test_find_tracefs_prefers_tracefs_then_debugfs(tmp_path):
    tracefs = tmp_path / "tracing"
    (tracefs / "events").mkdir(parents=True)
    debugfs = tmp_path / "debug"
    (debugfs / "tracing" / "events").mkdir(parents=True)
    both = write_mounts(tmp_path, f"none {debugfs} debugfs rw 0 0", f"nodev {tracefs} tracefs rw 0 0")
    assert kernel.find_tracefs(both) == str(tracefs)
    only_debugfs = write_mounts(tmp_path, f"none {debugfs} debugfs rw 0 0")
    assert kernel.find_tracefs(only_debugfs) == str(debugfs / "tracing")
    nothing = write_mounts(tmp_path, "proc /proc proc rw 0 0")
    assert kernel.find_tracefs(nothing) is None


def test_ensure_tracefs_without_mounting_says_how(tmp_path):
    nothing = write_mounts(tmp_path, "proc /proc proc rw 0 0")
    with pytest.raises(TracerError, match="mount -t tracefs nodev /sys/kernel/tracing"):
        kernel.ensure_tracefs(nothing, mount=False)


@pytest.mark.parametrize(
    "text,mode",
    [
        ("none [integrity] confidentiality\n", "integrity"),
        ("[none] integrity confidentiality", "none"),
        ("garbage", "unknown"),
    ],
)
def test_lockdown_mode_reads_the_bracketed_word(tmp_path, text, mode):
    path = tmp_path / "lockdown"
    path.write_text(text)
    assert kernel.lockdown_mode(lockdown_file=str(path)) == mode


def test_lockdown_mode_without_the_file(tmp_path):
    missing = str(tmp_path / "lockdown")
    # securityfs mounted but no lockdown file: the lockdown LSM is not active.
    with_securityfs = write_mounts(tmp_path, "none /sys/kernel/security securityfs rw 0 0")
    assert kernel.lockdown_mode(mounts=with_securityfs, lockdown_file=missing) == "none"
    # securityfs not mounted and not asked to mount it: we cannot know.
    without = write_mounts(tmp_path, "proc /proc proc rw 0 0")
    assert kernel.lockdown_mode(mounts=without, lockdown_file=missing) == "unknown"


def test_ensure_tracefs_on_this_host():
    # Mounts tracefs if this machine has none (root), which is the behaviour under test.
    if not kernel.is_root() and kernel.find_tracefs() is None:
        pytest.skip("tracefs unmounted and not root: cannot mount it")
    path = kernel.ensure_tracefs()
    assert os.path.isdir(os.path.join(path, "events", "maple_tree", "ma_write"))


# -- config, uname, perf ----------------------------------------------------------------

CONFIG_TEXT = """\
#
# Automatically generated file; DO NOT EDIT.
CONFIG_DEBUG_INFO_BTF=y
# CONFIG_KPROBES is not set
CONFIG_NR_CPUS=64
CONFIG_MODULE_FOO=m
CONFIG_DEFAULT_HOSTNAME="(none)"
"""


def test_kernel_config_from_gz_then_plain(tmp_path):
    gz = tmp_path / "config.gz"
    gz.write_bytes(gzip.compress(CONFIG_TEXT.encode()))
    plain = tmp_path / "config-6.1.0"
    plain.write_text("CONFIG_KPROBES=y\n")
    config = kernel.kernel_config(candidates=[str(tmp_path / "absent.gz"), str(gz), str(plain)])
    assert config.source == str(gz)
    assert config.get("CONFIG_NR_CPUS") == "64" and config.get("CONFIG_DEFAULT_HOSTNAME") == '"(none)"'
    assert config.get("CONFIG_KPROBES") is None and not config.enabled("CONFIG_KPROBES")
    assert config.enabled("CONFIG_MODULE_FOO") and config.enabled("CONFIG_DEBUG_INFO_BTF")
    assert kernel.kernel_config(candidates=[str(plain)]).enabled("CONFIG_KPROBES")


def test_kernel_config_absent_and_corrupt(tmp_path):
    bad = tmp_path / "config.gz"
    bad.write_bytes(b"not gzip")
    assert kernel.kernel_config(candidates=[str(tmp_path / "none"), str(bad)]) is None


def test_this_host_kernel_facts():
    u = kernel.uname()
    assert u["release"] == os.uname().release and u["machine"] == os.uname().machine
    config = kernel.kernel_config()
    files = kernel_truth.config_files()
    assert (config is None) == (not files)
    if config is not None:
        assert config.source == files[0]
        # Each option against its evidence in the running kernel.
        assert config.enabled("CONFIG_DEBUG_INFO_BTF") == os.path.exists("/sys/kernel/btf/vmlinux")
        assert config.enabled("CONFIG_KPROBES") == kernel_truth.in_kallsyms("register_kprobe")
        assert config.enabled("CONFIG_FUNCTION_TRACER") == kernel_truth.in_kallsyms("register_ftrace_function")
    assert kernel.btf_present() == os.path.exists("/sys/kernel/btf/vmlinux")
    assert isinstance(kernel.perf_event_paranoid(), int)


def test_this_host_lockdown():
    truth = kernel_truth.lockdown()
    if truth is None:
        pytest.skip("reading lockdown with securityfs mounted needs root")
    # Mounts securityfs if this machine has it unmounted, as doctor does.
    assert kernel.lockdown_mode(mount=True) == truth


def test_perf_event_paranoid_unreadable(tmp_path):
    assert kernel.perf_event_paranoid(str(tmp_path / "missing")) is None
