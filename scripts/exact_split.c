// SPDX-License-Identifier: GPL-2.0
/*
 * exact_split.c - time the per-VMA functions dup_mmap() calls, exactly, to
 * check the sampled split against (scripts/exact_split.py).
 *
 * For each function attached, the sum of entry->exit and the number of calls
 * made inside copy_process() (the only way dup_mmap() runs), per process:
 * vm_area_dup, anon_vma_fork and copy_page_range are called there only from
 * dup_mmap(). copy_process() returns also count the forks. dup_mmap() itself
 * is not needed (it is inlined into copy_process() on some kernels).
 *
 * Macros set by the loader, one per function it can attach to, VIA_FENTRY
 * (fentry/fexit) or VIA_KPROBE (kprobe/kretprobe); a function without one is
 * not attached: HOW_COPY_PROCESS (required), HOW_VM_AREA_DUP,
 * HOW_ANON_VMA_FORK, HOW_COPY_PAGE_RANGE.
 */

#include <uapi/linux/ptrace.h>

#define VIA_FENTRY 1
#define VIA_KPROBE 2

enum fn { FN_VM_AREA_DUP, FN_ANON_VMA_FORK, FN_COPY_PAGE_RANGE, NR_FNS, FN_FORKS = NR_FNS };

struct thread {
	u32 depth;			/* inside copy_process() */
	u32 _pad;
	u64 open[NR_FNS];		/* entry time of the call in flight, 0: none */
};

struct key {
	u32 tgid;
	u32 fn;				/* enum fn; FN_FORKS: copy_process() calls */
};

struct total {
	u64 calls;
	u64 sum_ns;
	u64 nested;			/* entries that found a call in flight (not timed) */
};

BPF_HASH(threads, u32, struct thread, 10240);
BPF_HASH(totals, struct key, struct total, 10240);

static __always_inline struct total *total_of(u32 fn)
{
	struct key k = { .tgid = bpf_get_current_pid_tgid() >> 32, .fn = fn };
	struct total zero = {};

	return totals.lookup_or_try_init(&k, &zero);
}

static __always_inline void fork_enter(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct thread zero = {}, *t = threads.lookup_or_try_init(&tid, &zero);

	if (t)
		t->depth++;
}

static __always_inline void fork_exit(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct thread *t = threads.lookup(&tid);
	struct total *tot;

	if (!t || !t->depth)
		return;
	if (--t->depth == 0)
		threads.delete(&tid);
	tot = total_of(FN_FORKS);
	if (tot)
		__sync_fetch_and_add(&tot->calls, 1);
}

static __always_inline void fn_enter(u32 fn)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct thread *t = threads.lookup(&tid);
	struct total *tot;

	if (!t || !t->depth || fn >= NR_FNS)
		return;
	if (t->open[fn]) {
		tot = total_of(fn);
		if (tot)
			__sync_fetch_and_add(&tot->nested, 1);
		return;
	}
	t->open[fn] = bpf_ktime_get_ns();
}

static __always_inline void fn_exit(u32 fn)
{
	u64 now = bpf_ktime_get_ns();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct thread *t = threads.lookup(&tid);
	struct total *tot;

	if (!t || fn >= NR_FNS || !t->open[fn])
		return;
	tot = total_of(fn);
	if (tot) {
		__sync_fetch_and_add(&tot->calls, 1);
		__sync_fetch_and_add(&tot->sum_ns, now - t->open[fn]);
	}
	t->open[fn] = 0;
}

#if HOW_COPY_PROCESS == VIA_FENTRY
KFUNC_PROBE(copy_process) { fork_enter(); return 0; }
KRETFUNC_PROBE(copy_process) { fork_exit(); return 0; }
#elif HOW_COPY_PROCESS == VIA_KPROBE
int on_copy_process_entry(struct pt_regs *ctx) { fork_enter(); return 0; }
int on_copy_process_return(struct pt_regs *ctx) { fork_exit(); return 0; }
#else
#error "HOW_COPY_PROCESS must be VIA_FENTRY or VIA_KPROBE"
#endif

#define TIME_FENTRY(name, idx)					\
	KFUNC_PROBE(name) { fn_enter(idx); return 0; }		\
	KRETFUNC_PROBE(name) { fn_exit(idx); return 0; }
#define TIME_KPROBE(name, idx)								\
	int on_##name##_entry(struct pt_regs *ctx) { fn_enter(idx); return 0; }	\
	int on_##name##_return(struct pt_regs *ctx) { fn_exit(idx); return 0; }

#if HOW_VM_AREA_DUP == VIA_FENTRY
TIME_FENTRY(vm_area_dup, FN_VM_AREA_DUP)
#elif HOW_VM_AREA_DUP == VIA_KPROBE
TIME_KPROBE(vm_area_dup, FN_VM_AREA_DUP)
#endif

#if HOW_ANON_VMA_FORK == VIA_FENTRY
TIME_FENTRY(anon_vma_fork, FN_ANON_VMA_FORK)
#elif HOW_ANON_VMA_FORK == VIA_KPROBE
TIME_KPROBE(anon_vma_fork, FN_ANON_VMA_FORK)
#endif

#if HOW_COPY_PAGE_RANGE == VIA_FENTRY
TIME_FENTRY(copy_page_range, FN_COPY_PAGE_RANGE)
#elif HOW_COPY_PAGE_RANGE == VIA_KPROBE
TIME_KPROBE(copy_page_range, FN_COPY_PAGE_RANGE)
#endif
