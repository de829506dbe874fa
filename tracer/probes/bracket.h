/* SPDX-License-Identifier: GPL-2.0 */
/*
 * bracket.h - what bracket.c hands to user space, shared with its loader.
 *
 * bracket.py reads this file to build its ctypes record and counter names,
 * so the layout is written once (as libbpf-tools keeps <tool>.h). Keep it to
 * plain declarations: one field or enumerator per line, fixed-width types.
 */
#ifndef FORKTRACE_BRACKET_H
#define FORKTRACE_BRACKET_H

#define COMM_LEN 16

enum event_kind {
	EVENT_DUP = 1,	/* one dup_mmap() call */
	EVENT_CHILD,	/* sched_process_fork after it: the child's pid */
};

/* Counters user space reads at the end; indices shared with bracket.py. */
enum counter {
	C_LOST_RINGBUF = 0,	/* records dropped: ring buffer full */
	C_LOCK_EVENTS,		/* mmap_lock events that moved the state */
	C_DUPS,			/* brackets closed */
	C_REENTRY,		/* bracket restarted before it closed */
	C_STORAGE_FAIL,		/* no per-thread storage could be had */
	C_SAMPLES,		/* perf samples taken inside dup_mmap() */
	C_SAMPLE_LOST,		/* samples whose stack could not be saved */
	C_SLOW_PATH,		/* per-VMA events that missed the per-CPU slot */
	C_LAST_STORE_MISSED,	/* brackets whose last store was not timed */
	C_OPEN_AT_ATTACH,	/* bracket left open from before every program was attached */
	C_OFFCPU_FULL,		/* switch-outs not timed: the off-CPU map was full */
	NR_COUNTERS,
};

struct dup_event {
	u64 ts_parent_lock;
	u64 ts_child_lock;
	u64 ts_first_store;
	u64 ts_last_store;
	u64 ts_child_unlock;
	u64 ts_parent_unlock;
	u64 seq;		/* per-thread dup_mmap() count, pairs EVENT_CHILD */
	u64 min_step;		/* shortest timed store -> next store, ns (0: < 2 stores) */
	u32 kind;
	u32 pid;
	u32 tid;
	u32 cpu;
	u32 stores;
	u32 null_stores;
	u32 zero_stores;
	u32 other_writes;
	u32 leaves;
	s32 parent_map_count;
	u32 child_pid;
	u32 switches;		/* times the thread was switched out inside the bracket */
	char comm[COMM_LEN];
	/*
	 * Off CPU between the child lock and the parent unlock, ns: switched out
	 * (preempted or blocked) until switched back in. By the window the thread
	 * left the CPU in, as the sampler names them; offcpu_ns is the total, which
	 * exceeds their sum where the windows are unknown (no per-VMA program).
	 */
	u64 offcpu_ns;
	u64 offcpu_mt_dup;	/* child lock -> first store */
	u64 offcpu_vma_loop;	/* first store -> child unlock */
	u64 offcpu_tail;	/* child unlock -> parent unlock */
};

/* struct sample_key.phase: where in dup_mmap() a sample landed. */
enum sample_phase {
	SAMPLE_MT_DUP = 1,	/* child lock -> first store */
	SAMPLE_VMA_LOOP,	/* between stores */
	SAMPLE_TAIL,		/* after the child unlock */
};

#endif /* FORKTRACE_BRACKET_H */
