// SPDX-License-Identifier: GPL-2.0
/*
 * exact.c - time dup_mmap() and the functions it calls from their own
 * entries and exits, where the running kernel lets a probe attach.
 *
 * One record per dup_mmap() call of a traced thread: entry and exit time,
 * the return value, and for each child function that could be attached
 * (enum child_fn in exact.h) the calls made from inside that dup_mmap():
 * count, sum and maximum of entry->exit, and the first entry's time. Each
 * child has its own open slot, so a child called inside another child (a
 * mas_store() under undo_dup_mmap()) is timed on its own; an entry that
 * finds its slot still open, or an exit that never comes before dup_mmap()
 * returns, is counted as an entry without an exit rather than timed.
 *
 * count(), traced_tgid() and the `counters` and `targets` maps come from
 * common.bpf.h, which the loader puts in front of this text.
 *
 * Macros set by the loader (exact.py), one per function it can attach to,
 * each VIA_FENTRY (fentry/fexit, BTF trampolines) or VIA_KPROBE
 * (kprobe/kretprobe); a function without one is not attached:
 *   HOW_DUP_MMAP             required: every other function is timed per dup_mmap() call
 *   HOW_MT_DUP, HOW_MAS_STORE, HOW_VM_AREA_DUP, HOW_UNDO_DUP_MMAP
 * and
 *   FILTER_TGIDS             only trace processes in the `targets` map
 *   FOLLOW_CHILDREN          add children of targets to `targets` (needs TASK_PID_OFF)
 *   TASK_PID_OFF             offsetof(struct task_struct, pid), from BTF
 *   RINGBUF_PAGES            ring buffer size, in pages
 *
 * kprobe programs have plain names (on_<fn>_entry/_return) and the loader
 * attaches them to the names kallsyms gives (compiler clones included);
 * bcc attaches fentry programs (kfunc__/kretfunc__) by BTF name as it loads them.
 */

#include <uapi/linux/ptrace.h>

#define VIA_FENTRY 1
#define VIA_KPROBE 2

#if !defined(HOW_DUP_MMAP) || (HOW_DUP_MMAP != VIA_FENTRY && HOW_DUP_MMAP != VIA_KPROBE)
#error "HOW_DUP_MMAP must be VIA_FENTRY or VIA_KPROBE"
#endif

#include "exact.h"

struct thread_state {
	u32 in_dup;
	u32 _pad;
	u64 seq;
	u64 child_open[NR_CHILDREN];	/* entry time of the call in flight, 0: none */
	struct exact_event ev;
};

BPF_HASH(threads, u32, struct thread_state, 10240);
BPF_PERCPU_ARRAY(zero_state, struct thread_state, 1);	/* all zero: the initial state */
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline void dup_enter(void)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct thread_state *s;
	u64 seq;
	int zero = 0;

	if (!traced_tgid(id >> 32))
		return;
	s = threads.lookup(&tid);
	if (!s) {
		struct thread_state *init = zero_state.lookup(&zero);

		if (!init)
			return;
		threads.update(&tid, init);
		s = threads.lookup(&tid);
		if (!s) {
			count(X_STATE_FAIL);
			return;
		}
	}
	if (s->in_dup)
		count(X_DUP_NO_EXIT);	/* the last entry's exit never came */
	seq = s->seq;
	__builtin_memset(s, 0, sizeof(*s));
	s->seq = seq;
	s->in_dup = 1;
	s->ev.pid = id >> 32;
	s->ev.tid = tid;
	s->ev.ts_entry = bpf_ktime_get_ns();
}

static __always_inline void dup_exit(s64 ret)
{
	u64 now = bpf_ktime_get_ns();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct thread_state *s = threads.lookup(&tid);
	int i;

	if (!s || !s->in_dup) {
		if (traced_tgid(bpf_get_current_pid_tgid() >> 32))
			count(X_STRAY_EXITS);
		return;
	}
#pragma unroll
	for (i = 0; i < NR_CHILDREN; i++) {
		if (s->child_open[i]) {
			s->ev.child_no_exit[i]++;
			count(X_CHILD_NO_EXIT);
		}
	}
	s->ev.ts_exit = now;
	s->ev.ret = ret;
	s->ev.seq = ++s->seq;
	s->ev.cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(&s->ev.comm, sizeof(s->ev.comm));
	if (events.ringbuf_output(&s->ev, sizeof(s->ev), 0) < 0)
		count(X_LOST_RINGBUF);
	count(X_DUPS);
	s->in_dup = 0;
}

/* Only the traced thread inside dup_mmap() has state with in_dup set. */
static __always_inline struct thread_state *in_dup(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct thread_state *s = threads.lookup(&tid);

	return s && s->in_dup ? s : NULL;
}

static __always_inline void child_enter(int c)
{
	struct thread_state *s = in_dup();
	u64 now;

	if (!s || c < 0 || c >= NR_CHILDREN)
		return;
	now = bpf_ktime_get_ns();
	if (s->child_open[c]) {
		s->ev.child_no_exit[c]++;	/* recursion or a missed exit: not timed */
		count(X_CHILD_NO_EXIT);
	}
	s->child_open[c] = now;
	if (!s->ev.child_first[c])
		s->ev.child_first[c] = now;
}

static __always_inline void child_exit(int c)
{
	struct thread_state *s = in_dup();
	u64 now = bpf_ktime_get_ns(), took;

	if (!s || c < 0 || c >= NR_CHILDREN || !s->child_open[c])
		return;
	took = now - s->child_open[c];
	s->child_open[c] = 0;
	s->ev.child_calls[c]++;
	s->ev.child_sum_ns[c] += took;
	if (took > s->ev.child_max_ns[c])
		s->ev.child_max_ns[c] = took;
}

#if HOW_DUP_MMAP == VIA_FENTRY
KFUNC_PROBE(dup_mmap)
{
	dup_enter();
	return 0;
}

/* int dup_mmap(struct mm_struct *mm, struct mm_struct *oldmm) */
KRETFUNC_PROBE(dup_mmap, void *mm, void *oldmm, int ret)
{
	dup_exit(ret);
	return 0;
}
#else
int on_dup_mmap_entry(struct pt_regs *ctx)
{
	dup_enter();
	return 0;
}

int on_dup_mmap_return(struct pt_regs *ctx)
{
	dup_exit((int)PT_REGS_RC(ctx));
	return 0;
}
#endif

#define TIME_CHILD_FENTRY(fn, idx)				\
	KFUNC_PROBE(fn) { child_enter(idx); return 0; }		\
	KRETFUNC_PROBE(fn) { child_exit(idx); return 0; }

#define TIME_CHILD_KPROBE(fn, idx)								\
	int on_##fn##_entry(struct pt_regs *ctx) { child_enter(idx); return 0; }	\
	int on_##fn##_return(struct pt_regs *ctx) { child_exit(idx); return 0; }

/* Undefined HOW_* read as 0 in #if: that function is not attached. */
#if HOW_MT_DUP == VIA_FENTRY
TIME_CHILD_FENTRY(__mt_dup, CHILD_MT_DUP)
#elif HOW_MT_DUP == VIA_KPROBE
TIME_CHILD_KPROBE(__mt_dup, CHILD_MT_DUP)
#endif
#if HOW_MAS_STORE == VIA_FENTRY
TIME_CHILD_FENTRY(mas_store, CHILD_MAS_STORE)
#elif HOW_MAS_STORE == VIA_KPROBE
TIME_CHILD_KPROBE(mas_store, CHILD_MAS_STORE)
#endif
#if HOW_VM_AREA_DUP == VIA_FENTRY
TIME_CHILD_FENTRY(vm_area_dup, CHILD_VM_AREA_DUP)
#elif HOW_VM_AREA_DUP == VIA_KPROBE
TIME_CHILD_KPROBE(vm_area_dup, CHILD_VM_AREA_DUP)
#endif
#if HOW_UNDO_DUP_MMAP == VIA_FENTRY
TIME_CHILD_FENTRY(undo_dup_mmap, CHILD_UNDO_DUP_MMAP)
#elif HOW_UNDO_DUP_MMAP == VIA_KPROBE
TIME_CHILD_KPROBE(undo_dup_mmap, CHILD_UNDO_DUP_MMAP)
#endif

#ifdef FOLLOW_CHILDREN
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	/* (struct task_struct *parent, struct task_struct *child) */
	u32 child_pid = 0;
	u8 one = 1;

	if (!traced_tgid(bpf_get_current_pid_tgid() >> 32))
		return 0;
	bpf_probe_read_kernel(&child_pid, sizeof(child_pid), (void *)(ctx->args[FORK_CHILD_ARG] + TASK_PID_OFF));
	targets.update(&child_pid, &one);
	return 0;
}
#endif
