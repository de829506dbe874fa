"""Where the bracket attaches: its tracepoints and the struct members it reads.

Facts about the kernel's interface, kept below the probes so that doctor
(tracer/host/survey.py) can check them without importing the probes' loaders
(bcc, ctypes records, numpy); tracer/probes/bracket.py attaches to these.
"""

from __future__ import annotations

__all__ = ["BTF_OFFSETS", "TRACEPOINTS"]

# Tracepoints the bracket attaches to (category, event): one list, which doctor checks too.
TRACEPOINTS = (
    ("mmap_lock", "mmap_lock_acquire_returned"),
    ("mmap_lock", "mmap_lock_released"),
    ("maple_tree", "ma_write"),
    ("sched", "sched_process_fork"),
    ("sched", "sched_switch"),  # off-CPU time inside the bracket, at every level
)

# struct members the raw tracepoint programs read, with the -D macro that carries each offset.
BTF_OFFSETS = {
    ("ma_state", "node"): "ma_state_node_off",
    ("task_struct", "pid"): "task_pid_off",
    ("mm_struct", "map_count"): "mm_map_count_off",
}
