/* SPDX-License-Identifier: GPL-2.0 */
/*
 * exact.h - what exact.c hands to user space, shared with its loader.
 *
 * exact.py reads this file (tracer/probes/cheader.py) for its ctypes record,
 * counter and child-function names. Plain declarations only: one field or
 * enumerator per line, fixed-width types, array lengths given by #define.
 */
#ifndef FORKTRACE_EXACT_H
#define FORKTRACE_EXACT_H

#define COMM_LEN 16
#define NR_CHILDREN 4

/* Functions timed inside one dup_mmap() call: index of the per-child arrays. */
enum child_fn {
	CHILD_MT_DUP = 0,	/* __mt_dup(): v6.8+ copies the whole tree */
	CHILD_MAS_STORE,	/* mas_store(): one per VMA, from dup_mmap() only */
	CHILD_VM_AREA_DUP,	/* vm_area_dup(): the first one ends the tree copy */
	CHILD_UNDO_DUP_MMAP,	/* undo_dup_mmap(): only when the copy failed */
};

/* Counters user space reads at the end; indices shared with exact.py. */
enum exact_counter {
	X_LOST_RINGBUF = 0,	/* records dropped: ring buffer full */
	X_DUPS,			/* dup_mmap() calls timed entry to exit */
	X_DUP_NO_EXIT,		/* dup_mmap() entries whose exit never came */
	X_STRAY_EXITS,		/* exits without an entry (attached mid-call) */
	X_CHILD_NO_EXIT,	/* child entries whose exit never came */
	X_STATE_FAIL,		/* no per-thread state could be had */
	NR_X_COUNTERS,
};

struct exact_event {
	u64 ts_entry;		/* dup_mmap() entry */
	u64 ts_exit;		/* dup_mmap() return */
	u64 seq;		/* per-thread dup_mmap() count */
	s64 ret;		/* dup_mmap()'s return value: 0 or -errno */
	u64 child_first[NR_CHILDREN];	/* first entry time, 0: never called */
	u64 child_sum_ns[NR_CHILDREN];
	u64 child_max_ns[NR_CHILDREN];
	u32 child_calls[NR_CHILDREN];	/* calls that returned */
	u32 child_no_exit[NR_CHILDREN];	/* entries whose exit never came */
	u32 pid;
	u32 tid;
	u32 cpu;
	u32 _pad;
	char comm[COMM_LEN];
};

#endif /* FORKTRACE_EXACT_H */
