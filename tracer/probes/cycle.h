/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cycle.h - what cycle.c hands to user space, shared with its loader.
 *
 * cycle.py reads this file (tracer/probes/cheader.py) for its ctypes record,
 * counter names and syscall numbers. Plain declarations only: one field or
 * enumerator per line, fixed-width types.
 */
#ifndef FORKTRACE_CYCLE_H
#define FORKTRACE_CYCLE_H

enum cycle_kind {
	CYCLE_CLONE = 1,	/* clone/fork syscall in the parent; child_pid: its return */
	CYCLE_WAIT,		/* wait4/waitid that reaped child_pid */
	CYCLE_EXIT_MMAP,	/* the child child_pid tore down its address space */
};

/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
enum cycle_syscall {
	NR_CLONE = 56,
	NR_FORK = 57,
	NR_VFORK = 58,
	NR_WAIT4 = 61,
	NR_WAITID = 247,
	NR_CLONE3 = 435,
};

/* Counters user space reads at the end; indices shared with cycle.py. */
enum cycle_counter {
	CC_LOST_RINGBUF = 0,	/* records dropped: ring buffer full */
	CC_CLONES,		/* clone records sent */
	CC_WAITS,		/* wait records sent */
	CC_EXIT_MMAPS,		/* exit_mmap records sent */
	CC_CHILDREN,		/* children followed to their exit_mmap */
	NR_CYCLE_COUNTERS,
};

struct cycle_event {
	u64 ts_start;
	u64 ts_end;
	u32 kind;
	u32 pid;		/* tgid of the thread the event happened in */
	u32 tid;		/* that thread: the parent (clone, wait), the child (exit_mmap) */
	s32 child_pid;		/* the child this event belongs to */
	u32 nr;			/* syscall number (clone, wait); 0 for exit_mmap */
	u32 _pad;
};

#endif /* FORKTRACE_CYCLE_H */
