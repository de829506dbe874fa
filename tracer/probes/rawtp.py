"""Which raw tracepoint argument holds what, on the running kernel.

A raw tracepoint program reads its event's C arguments by position
(ctx->args[i]), and positions move between kernels: up to v6.13 the
mmap_lock events pass the memcg path second, `(mm, memcg_path, write,
success)`; later ones `(mm, write, success)`. Reading position 1 as `write`
on a v6.1 or v6.12 kernel takes the low byte of a string pointer, and the
bracket silently misses every fork whose (randomised) stack buffer happens to
end in a zero byte. So the positions come from the kernel's own prototype
(BTF's btf_trace_<event>), and an event whose arguments the programs read do
not have the expected types is refused with one line, never misread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from analysis.errors import TracerError

__all__ = ["ARGUMENTS", "argument_macros", "as_cflags", "locate", "macros_for"]

# Per event: what the programs read, as (macro, C type, which occurrence of that type).
# The macro gives ctx->args' index of that argument.
ARGUMENTS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "mmap_lock_acquire_returned": (
        ("LOCK_MM_ARG", "struct mm_struct *", 0),
        ("LOCK_WRITE_ARG", "_Bool", 0),
        ("LOCK_SUCCESS_ARG", "_Bool", 1),
    ),
    "mmap_lock_released": (
        ("UNLOCK_MM_ARG", "struct mm_struct *", 0),
        ("UNLOCK_WRITE_ARG", "_Bool", 0),
    ),
    "ma_write": (
        ("MA_WRITE_FN_ARG", "char *", 0),
        ("MA_WRITE_MAS_ARG", "struct ma_state *", 0),
        ("MA_WRITE_VAL_ARG", "void *", 0),
    ),
    "sched_process_fork": (("FORK_CHILD_ARG", "struct task_struct *", 1),),
    "sched_switch": (("SWITCH_NEXT_ARG", "struct task_struct *", 1),),
    "sys_enter": (("SYS_ENTER_REGS_ARG", "struct pt_regs *", 0), ("SYS_ENTER_ID_ARG", "long int", 0)),
    "sys_exit": (("SYS_EXIT_REGS_ARG", "struct pt_regs *", 0), ("SYS_EXIT_RET_ARG", "long int", 0)),
    "exit_mmap": (("EXIT_MMAP_MM_ARG", "struct mm_struct *", 0),),
}


def macros_for(events: Sequence[str]) -> list[str]:
    """The -D names a program reading `events` by position needs."""
    return [macro for event in events for macro, _, _ in ARGUMENTS.get(event, ())]


def locate(event: str, params: Sequence[str]) -> dict[str, int]:
    """{macro: index} for `event`'s arguments in `params` (types as Btf.tracepoint_params spells them).

    >>> locate("mmap_lock_acquire_returned", ["struct mm_struct *", "char *", "_Bool", "_Bool"])
    {'LOCK_MM_ARG': 0, 'LOCK_WRITE_ARG': 2, 'LOCK_SUCCESS_ARG': 3}
    """
    found = {}
    for macro, c_type, occurrence in ARGUMENTS[event]:
        positions = [i for i, p in enumerate(params) if p == c_type]
        if len(positions) <= occurrence:
            raise TracerError(
                f"raw tracepoint {event} has arguments ({', '.join(params)}) on this kernel, "
                f"not the {c_type!r} the program reads: use --backend tracepoint"
            )
        found[macro] = positions[occurrence]
    return found


def argument_macros(events: Sequence[str], params_of: Callable[[str], Sequence[str]] | None = None) -> dict[str, int]:
    """{macro: index} for every event in `events` that ARGUMENTS describes.

    params_of(event) -> its argument types; by default from the running kernel's BTF.
    """
    if params_of is None:
        from tracer.host import btf

        params_of = lambda event: btf.load_btf().tracepoint_params(event)  # noqa: E731
    macros: dict[str, int] = {}
    for event in events:
        if event in ARGUMENTS:
            macros.update(locate(event, params_of(event)))
    return macros


def as_cflags(macros: Mapping[str, int]) -> list[str]:
    return [f"-D{macro}={index}" for macro, index in sorted(macros.items())]
