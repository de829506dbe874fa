// SPDX-License-Identifier: GPL-2.0
/*
 * bracket.c - time dup_mmap() per fork from tracepoints alone.
 *
 * Kernels built without kprobes, or whose lib/ has no ftrace hooks, still
 * emit these events in the forking thread, in this order (kernel v6.8+):
 *
 *   mmap_lock_acquire_returned  write, parent mm   dup_mmap() has started
 *   mmap_lock_acquire_returned  write, child mm    __mt_dup() follows
 *   ma_write "mas_store"        once per VMA       the replace loop
 *   mmap_lock_released          child mm
 *   mmap_lock_released          parent mm          dup_mmap() returns
 *
 * A write lock taken on a second mm while the first is held happens only in
 * dup_mmap(), so a per-thread state machine recognises the bracket. The
 * per-VMA events are aggregated here (counts, first/last time, distinct
 * leaves); user space gets one record per dup_mmap() call.
 *
 * Two entry-point sets share the logic: raw tracepoints (RAW_TP defined; the
 * cheaper ones, which read ma_state and task_struct through offsets the
 * loader takes from the running kernel's BTF) and classic tracepoints. With
 * raw tracepoints, the per-VMA program is BTF-typed (tp_btf) where the
 * kernel allows it (TYPED_MA_WRITE): its ma_state read is a plain load.
 *
 * The per-VMA program runs once per copied VMA and is most of the tracer's
 * cost, so its state is found without a task storage lookup: the thread
 * that enters the loop claims its CPU's slot in `cpu_slots` (keyed by the
 * task pointer), and ma_write checks that slot first. dup_mmap() can sleep
 * and migrate while it holds mmap_lock, so a thread whose CPU slot is not
 * its own falls back to its task storage, which names the slot it claimed
 * (or holds the aggregates itself when every slot was busy). Only the owner
 * writes a slot, and a BPF program does not migrate while it runs.
 *
 * Time off CPU: sched_switch runs in the thread leaving the CPU, so one task
 * storage lookup tells whether it is inside a bracket (child lock -> parent
 * unlock); if so, its switch-out time goes into `offcpu`, keyed by tid. The
 * thread coming in is known only by its pid there, so it is looked up in
 * `offcpu` -- and only while some bracket thread is off CPU (`parked`), so
 * the usual context switch costs a task storage lookup and an array read.
 * This runs per switch, not per VMA: it is on at every level.
 *
 * Stores are timed where a column needs it, not all of them: the first, the
 * next MIN_STEP_STORES (for min_step), and the last, known in advance within
 * a few. Since v6.8 the replace loop visits every parent VMA (mm->map_count,
 * read at the child lock; parent write-locked, so stable) and calls
 * mas_store() for each one it copies. A VM_DONTCOPY VMA (MADV_DONTFORK) is
 * cleared with vma_iter_clear_gfp() -> mas_store_gfp() instead, whose
 * ma_write names "mas_store_gfp" (v6.8-v6.11), or from v6.12 the write
 * path's own function (mas_wr_node_store, ...), or nothing at all (an
 * exact-fit store writes the slot without a tracepoint). So the last
 * mas_store() is call number map_count - (VM_DONTCOPY VMAs). Each write of
 * NULL by another function lowers the expected number (a clear that shows as
 * several writes lowers it too far, which only times more stores), and every
 * store from UNSEEN_STORES calls before the expected last one on is timed,
 * for the clears that show nothing: the last store is timed unless more than
 * UNSEEN_STORES VM_DONTCOPY VMAs are cleared unseen, at UNSEEN_STORES extra
 * timestamps per fork. Only mas_store() calls count: before v6.8 the bulk
 * build also emits ma_write from mas_wr_bnode() on most stores, and skips
 * VM_DONTCOPY VMAs, so the loader times every store there
 * (TIME_EVERY_STORE). A last store that was not timed is counted
 * (C_LAST_STORE_MISSED) and its time left 0: no phase is made of a wrong one.
 *
 * count(), traced_tgid() and the `counters` and `targets` maps come from
 * common.bpf.h, which the loader puts in front of this text.
 *
 * Macros set by the loader:
 *   RAW_TP                   use raw tracepoints
 *   MAX_CPUS                 number of possible CPUs (size of cpu_slots)
 *   NO_PER_VMA               --level fork: no ma_write program at all
 *   TYPED_MA_WRITE           the ma_write program is tp_btf, loaded by bracket.py (RAW_TP)
 *   MA_STATE_NODE_OFF        offsetof(struct ma_state, node)       (RAW_TP)
 *   TASK_PID_OFF             offsetof(struct task_struct, pid)     (RAW_TP)
 *   *_ARG                    ctx->args index of each argument read (RAW_TP;
 *                            rawtp.py, from the kernel's tracepoint prototypes)
 *   MM_MAP_COUNT_OFF         offsetof(struct mm_struct, map_count) (-1: unknown)
 *   FILTER_TGIDS             only trace processes in the `targets` map
 *   FOLLOW_CHILDREN          add children of targets to `targets`
 *   SAMPLE                   build the perf_event sampling program
 *   OFFCPU_THREADS           bracket threads that can be off CPU at once (size of `offcpu`)
 *   RINGBUF_PAGES            ring buffer size, in pages
 *
 * Ablation switches (scripts/bench_overhead.py builds one variant per set;
 * each removes or replaces one piece of the per-VMA program):
 *   ABLATE_VMA_BODY          ma_write finds its state, then returns
 *   ABLATE_FN_CHECK          every ma_write counts as a store (no fn check)
 *   ABLATE_MA_STATE          no read of ma_state->node (leaf = 0)
 *   ABLATE_TIMESTAMP         no store is timed
 *   ABLATE_LEAVES            no leaf tracking
 *   LOOKUP_TASK_STORAGE      per-VMA state from task storage (no CPU slot)
 *   TIME_EVERY_STORE         time every store (min_step over all stores)
 */

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

/* xa_mk_internal(257): what dup_mmap() stores where it failed (v6.8+). */
#define DUP_FAILED_MARK 0x406UL

/* Stores after the first that are timed for min_step (all with TIME_EVERY_STORE). */
#define MIN_STEP_STORES 16

/* Stores before the expected last one that are timed too: VM_DONTCOPY VMAs call no mas_store(). */
#define UNSEEN_STORES 32

#if MM_MAP_COUNT_OFF < 0 && !defined(TIME_EVERY_STORE)
#define TIME_EVERY_STORE	/* no map_count: the last store is not known in advance */
#endif
#ifdef TIME_EVERY_STORE
#define TIME_ALL 1
#else
#define TIME_ALL 0
#endif

enum bracket_state {
	IDLE = 0,
	PARENT_LOCKED,	/* holds one mm for write: maybe dup_mmap(), maybe mmap() */
	IN_DUP,		/* holds a second mm for write: inside dup_mmap() */
	CHILD_UNLOCKED,	/* child released, parent not yet: the last steps */
};

#include "bracket.h"

/* What the per-VMA program accumulates for one dup_mmap() call. */
struct vma_agg {
	u64 task;		/* cpu_slots: the owning task_struct, 0 when free */
	u64 mas_store_fn;	/* address of the "mas_store" string, once seen */
	u64 last_leaf;
	u64 ts_first_store;
	u64 ts_last_store;
	u64 ts_prev_store;	/* last timed store, for min_step */
	u64 min_step;
	u32 last_timed;		/* mas_store() call number of the last timed store */
	u32 expected_stores;	/* parent map_count: at most one mas_store() per VMA (0: unknown) */
	u32 stores;
	u32 null_stores;
	u32 zero_stores;
	u32 other_writes;
	u32 leaves;
	u32 _pad[5];		/* 128 bytes: CPUs' slots share no cache line */
};

#define NO_SLOT 0xffffffffU

struct thread_state {
	u32 state;
	u32 slot_cpu;		/* cpu_slots index claimed at the child lock, or NO_SLOT */
	u64 parent_mm;
	u64 child_mm;
	u64 seq;
	struct vma_agg agg;	/* the aggregates when no slot could be claimed */
	struct dup_event ev;
};

struct sample_key {
	s32 stackid;
	u32 phase;	/* enum sample_phase */
};

BPF_TASK_STORAGE(threads, struct thread_state);
BPF_ARRAY(cpu_slots, struct vma_agg, MAX_CPUS);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/*
 * bcc attaches one program at a time: a write section that began before the
 * release program was attached never closes. The loader stores here the time
 * every program was attached; an unclosed bracket that began before it is
 * an artefact of attaching, not an anomaly of the kernel's locking.
 */
BPF_ARRAY(armed_at, u64, 1);

#ifndef OFFCPU_THREADS
#define OFFCPU_THREADS 10240
#endif

/* Off-CPU time of one thread's open bracket, by tid (see the top of this file). */
struct offcpu_acc {
	u64 out_ts;		/* switched out at; 0 while on CPU */
	u64 ns;
	u64 mt_dup_ns;		/* by the window it left the CPU in (enum sample_phase) */
	u64 vma_loop_ns;
	u64 tail_ns;
	u32 switches;
	u32 window;		/* enum sample_phase at the switch-out; 0: unknown */
};

BPF_HASH(offcpu, u32, struct offcpu_acc, OFFCPU_THREADS);
/* Bracket threads switched out now: the switch-in lookup is skipped while 0. */
BPF_ARRAY(parked, s64, 1);

#ifdef SAMPLE
BPF_STACK_TRACE(stacks, 16384);
BPF_HASH(samples, struct sample_key, u64, 16384);
#endif

/*
 * A ring buffer wakeup is an irq_work self-interrupt: an APIC write, which
 * traps to the hypervisor in a VM and costs microseconds inside dup_mmap().
 * User space polls with a 100 ms timeout anyway, so a thread wakes it only
 * for its first record (the reader snapshots /proc/PID/maps of a process it
 * sees fork for the first time, and must do so while the process lives) and
 * then every WAKEUP_EVERY records (a full buffer holds thousands).
 */
#define WAKEUP_EVERY 64

static __always_inline u64 wakeup_flags(u64 seq)
{
	return seq == 1 || seq % WAKEUP_EVERY == 0 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline struct thread_state *current_state(int create)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();

	return threads.task_storage_get(task, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

static __always_inline s32 read_map_count(u64 mm)
{
#if MM_MAP_COUNT_OFF >= 0
	s32 n = -1;

	bpf_probe_read_kernel(&n, sizeof(n), (void *)(mm + MM_MAP_COUNT_OFF));
	return n;
#else
	return -1;
#endif
}

static __always_inline struct task_struct *task_of_current(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

/* Zero all but the owner (a claimed slot must never look free) and the cached fn. */
static __always_inline void reset_agg(struct vma_agg *a, u32 expected)
{
	u64 fn = a->mas_store_fn;	/* the string's address never changes: keep it */

	__builtin_memset(&a->mas_store_fn, 0, sizeof(*a) - __builtin_offsetof(struct vma_agg, mas_store_fn));
	a->mas_store_fn = fn;
	a->expected_stores = expected;
}

/*
 * Take this CPU's slot for the loop to come, if free. A compare-and-swap,
 * since a tracing program may be preempted by another thread on this CPU.
 */
static __always_inline void claim_slot(struct thread_state *s, u64 task)
{
	u32 cpu = bpf_get_smp_processor_id();
	u32 expected = s->ev.parent_map_count > 0 ? s->ev.parent_map_count : 0;
	struct vma_agg *a;

	s->slot_cpu = NO_SLOT;
	s->agg.task = 0;
	reset_agg(&s->agg, expected);
#ifndef LOOKUP_TASK_STORAGE
	a = cpu_slots.lookup(&cpu);
	if (!a || __sync_val_compare_and_swap(&a->task, 0, task) != 0)
		return;
	reset_agg(a, expected);
	s->slot_cpu = cpu;
#endif
}

/* The aggregates of this thread's current bracket: its slot's, or its own. */
static __always_inline struct vma_agg *agg_of(struct thread_state *s)
{
	u32 cpu = s->slot_cpu;
	struct vma_agg *a;

	if (cpu == NO_SLOT)
		return &s->agg;
	a = cpu_slots.lookup(&cpu);
	return a ? a : &s->agg;
}

/* mas_store() calls seen so far: stores of a VMA, of NULL, of the failure mark. */
static __always_inline u32 store_calls(struct vma_agg *a)
{
	return a->stores + a->null_stores + a->zero_stores;
}

/* Copy the aggregates into the record and free the slot. Only in state IN_DUP. */
static __always_inline void release_slot(struct thread_state *s)
{
	struct vma_agg *a = agg_of(s);

	s->ev.ts_first_store = a->ts_first_store;
	s->ev.ts_last_store = a->ts_last_store;
	s->ev.min_step = a->min_step;
	s->ev.stores = a->stores;
	s->ev.null_stores = a->null_stores;
	s->ev.zero_stores = a->zero_stores;
	s->ev.other_writes = a->other_writes;
	s->ev.leaves = a->leaves;
	if (store_calls(a) != a->last_timed) {
		count(C_LAST_STORE_MISSED);
		s->ev.ts_last_store = 0;
	}
	if (s->slot_cpu != NO_SLOT)
		a->task = 0;
	s->slot_cpu = NO_SLOT;
}

/* The window this thread is in now, as enum sample_phase (0: not known at this level). */
static __always_inline u32 window_of(struct thread_state *s)
{
	if (s->state == CHILD_UNLOCKED)
		return SAMPLE_TAIL;
#ifdef NO_PER_VMA
	return 0;
#else
	return agg_of(s)->ts_first_store ? SAMPLE_VMA_LOOP : SAMPLE_MT_DUP;
#endif
}

static __always_inline void forget_offcpu(u32 tid)
{
	offcpu.delete(&tid);
}

/* At the parent unlock, in the thread itself (so on CPU): its off-CPU time into the record. */
static __always_inline void collect_offcpu(struct dup_event *ev)
{
	u32 tid = ev->tid;
	struct offcpu_acc *acc = offcpu.lookup(&tid);

	if (!acc)
		return;
	ev->offcpu_ns = acc->ns;
	ev->offcpu_mt_dup = acc->mt_dup_ns;
	ev->offcpu_vma_loop = acc->vma_loop_ns;
	ev->offcpu_tail = acc->tail_ns;
	ev->switches = acc->switches;
	offcpu.delete(&tid);
}

/* sched_switch, in the thread leaving the CPU: note the time if it is inside a bracket. */
static __always_inline void on_switch_out(void)
{
	struct thread_state *s = current_state(0);
	struct offcpu_acc fresh = {}, *acc;
	u32 tid;
	int zero = 0;
	s64 *n;

	if (!s || s->state < IN_DUP)
		return;
	tid = (u32)bpf_get_current_pid_tgid();
	acc = offcpu.lookup_or_try_init(&tid, &fresh);
	if (!acc) {
		count(C_OFFCPU_FULL);
		return;
	}
	if (!acc->out_ts) {
		n = parked.lookup(&zero);
		if (n)
			__sync_fetch_and_add(n, 1);
	}
	acc->window = window_of(s);
	acc->out_ts = bpf_ktime_get_ns();
}

/* sched_switch, for the thread coming in: close its off-CPU interval, if it has one open. */
static __always_inline s64 *parked_count(void)
{
	int zero = 0;
	s64 *n = parked.lookup(&zero);

	return n && *n > 0 ? n : NULL;
}

/* n: parked_count(), non-NULL (checked before reading the incoming pid). */
static __always_inline void on_switch_in(s64 *n, u32 tid)
{
	struct offcpu_acc *acc;
	u64 d;

	acc = offcpu.lookup(&tid);
	if (!acc || !acc->out_ts)
		return;
	d = bpf_ktime_get_ns() - acc->out_ts;
	acc->out_ts = 0;
	__sync_fetch_and_add(n, -1);
	acc->ns += d;
	acc->switches++;
	if (acc->window == SAMPLE_MT_DUP)
		acc->mt_dup_ns += d;
	else if (acc->window == SAMPLE_VMA_LOOP)
		acc->vma_loop_ns += d;
	else if (acc->window == SAMPLE_TAIL)
		acc->tail_ns += d;
}

static __always_inline void on_lock_acquired(u64 mm, int write, int success)
{
	struct thread_state *s;
	u64 now;

	if (!write || !success)
		return;
	s = current_state(0);
	if (!s || s->state == IDLE) {
		u64 id = bpf_get_current_pid_tgid();

		if (!traced_tgid(id >> 32))
			return;
		if (!s)
			s = current_state(1);
		if (!s) {
			count(C_STORAGE_FAIL);
			return;
		}
		s->state = PARENT_LOCKED;
		s->parent_mm = mm;
		s->ev.ts_parent_lock = bpf_ktime_get_ns();
		return;
	}
	now = bpf_ktime_get_ns();
	count(C_LOCK_EVENTS);
	if (s->state == PARENT_LOCKED && mm != s->parent_mm) {
		u64 id = bpf_get_current_pid_tgid();
		u64 start = s->ev.ts_parent_lock;

		__builtin_memset(&s->ev, 0, sizeof(s->ev));
		s->ev.ts_parent_lock = start;
		s->ev.ts_child_lock = now;
		s->ev.pid = id >> 32;
		s->ev.tid = (u32)id;
		s->ev.parent_map_count = read_map_count(s->parent_mm);
		s->child_mm = mm;
		claim_slot(s, (u64)task_of_current());
		forget_offcpu((u32)id);	/* a bracket that never closed may have left its entry */
		s->state = IN_DUP;
		return;
	}
	/* A bracket that never closed: start over here. */
	{
		int zero = 0;
		u64 *armed = armed_at.lookup(&zero);

		count(!armed || !*armed || s->ev.ts_parent_lock < *armed ? C_OPEN_AT_ATTACH : C_REENTRY);
	}
	if (s->state == IN_DUP)
		release_slot(s);
	s->state = PARENT_LOCKED;
	s->parent_mm = mm;
	s->ev.ts_parent_lock = now;
}

static __always_inline void on_lock_released(u64 mm)
{
	struct thread_state *s = current_state(0);

	if (!s || s->state == IDLE)
		return;
	if (s->state == PARENT_LOCKED) {
		if (mm == s->parent_mm)
			s->state = IDLE;	/* an ordinary write section, not a fork */
		return;
	}
	count(C_LOCK_EVENTS);
	if (mm == s->child_mm && s->state == IN_DUP) {
		s->ev.ts_child_unlock = bpf_ktime_get_ns();
		release_slot(s);
		s->state = CHILD_UNLOCKED;
		return;
	}
	if (mm != s->parent_mm)
		return;
	if (s->state == IN_DUP)
		release_slot(s);	/* child unlock not seen (should not happen) */
	s->ev.ts_parent_unlock = bpf_ktime_get_ns();
	if (!s->ev.ts_child_unlock)
		s->ev.ts_child_unlock = s->ev.ts_parent_unlock;
	s->ev.kind = EVENT_DUP;
	s->ev.cpu = bpf_get_smp_processor_id();
	s->ev.seq = ++s->seq;
	collect_offcpu(&s->ev);
	bpf_get_current_comm(&s->ev.comm, sizeof(s->ev.comm));
	if (events.ringbuf_output(&s->ev, sizeof(s->ev), wakeup_flags(s->seq)) < 0)
		count(C_LOST_RINGBUF);
	count(C_DUPS);
	s->state = IDLE;
}

/*
 * ma_write passes __func__: compare the string once, then the pointer.
 * Per-VMA work is kept to what the record needs; ma_write events are
 * counted per record (stores + null_stores + zero_stores + other_writes), not
 * in a map, so the hot path touches only this bracket's aggregates.
 */
static __always_inline int is_mas_store(struct vma_agg *a, u64 fn)
{
	char name[10] = {};

	if (a->mas_store_fn)
		return fn == a->mas_store_fn;
	bpf_probe_read_kernel(name, sizeof(name), (void *)fn);
	if (name[0] != 'm' || name[1] != 'a' || name[2] != 's' || name[3] != '_' ||
	    name[4] != 's' || name[5] != 't' || name[6] != 'o' || name[7] != 'r' ||
	    name[8] != 'e' || name[9] != 0)
		return 0;
	a->mas_store_fn = fn;
	return 1;
}

/* Whether this store's time is needed: see the top of this file. */
static __always_inline int store_is_timed(struct vma_agg *a, u32 call, u64 val)
{
#ifdef ABLATE_TIMESTAMP
	return 0;
#elif defined(TIME_EVERY_STORE)
	return 1;
#else
	return a->stores <= MIN_STEP_STORES || call + UNSEEN_STORES >= a->expected_stores ||
	       val == DUP_FAILED_MARK || !a->expected_stores;
#endif
}

#ifdef INJECT_STORE
/*
 * Test only (scripts/bench_triage.py's ground truth): spin inject_ns[0] ns
 * before every mas_store() but the first, inside the timed window, so
 * vma_loop grows by about that times (stores - 1) and no other phase moves.
 * With 0 the loop still reads the clock twice, as it does for any target: two
 * arms of one build differ by the spin alone, not by the clock reads' cost.
 * Never built unless -DINJECT_STORE.
 */
BPF_ARRAY(inject_ns, u64, 1);

static __always_inline void inject_store_cost(u32 call)
{
	int zero = 0;
	u64 *ns = inject_ns.lookup(&zero);
	u64 t0;
	int i;

	if (!ns || call < 2)
		return;
	t0 = bpf_ktime_get_ns();
	for (i = 0; i < 1024; i++)
		if (bpf_ktime_get_ns() - t0 >= *ns)
			break;
}
#else
#define inject_store_cost(call) do { } while (0)
#endif

/* Only the forking thread inside dup_mmap() gets here: see current_agg(). */
static __always_inline void on_ma_write(struct vma_agg *a, u64 fn, u64 leaf, u64 val)
{
	u32 call;

#ifndef ABLATE_FN_CHECK
	if (!is_mas_store(a, fn)) {
		a->other_writes++;
		if (!val && a->expected_stores > 1)
			a->expected_stores--;	/* a VM_DONTCOPY clear: see the top of this file */
		return;
	}
#endif
	call = store_calls(a) + 1;	/* this mas_store() call's number */
	inject_store_cost(call);
	if (store_is_timed(a, call, val)) {
		u64 now = bpf_ktime_get_ns();

		a->last_timed = call;
		if (!a->ts_first_store)
			a->ts_first_store = now;
		else if (a->ts_prev_store && (!a->min_step || now - a->ts_prev_store < a->min_step))
			a->min_step = now - a->ts_prev_store;
		/* A gap in the timed stores is not one step: only consecutive ones count. */
		a->ts_prev_store = a->stores < MIN_STEP_STORES || TIME_ALL ? now : 0;
		a->ts_last_store = now;
	}
	if (val == 0)
		a->null_stores++;
	else if (val == DUP_FAILED_MARK)
		a->zero_stores++;
	else
		a->stores++;
#ifndef ABLATE_LEAVES
	/* The replace loop walks leaves in order: a change of node is a new leaf. */
	if (leaf != a->last_leaf) {
		a->leaves++;
		a->last_leaf = leaf;
	}
#endif
}

/*
 * ma_write fires for every maple tree write system-wide: leave early. The
 * CPU slot answers for the forking thread without a task storage lookup.
 */
static __always_inline struct vma_agg *current_agg(void)
{
	u64 task = (u64)task_of_current();
	struct thread_state *s;
	struct vma_agg *a;

#ifndef LOOKUP_TASK_STORAGE
	u32 cpu = bpf_get_smp_processor_id();

	a = cpu_slots.lookup(&cpu);
	if (a && a->task == task)
		return a;
#endif
	s = current_state(0);
	if (!s || s->state != IN_DUP)
		return NULL;
	if (s->slot_cpu != NO_SLOT)
		count(C_SLOW_PATH);	/* migrated since the child lock */
	a = agg_of(s);
	return a->task == task || s->slot_cpu == NO_SLOT ? a : NULL;
}

static __always_inline void on_fork(u32 child_pid)
{
	struct thread_state *s = current_state(0);
	struct dup_event ev = {};
	u64 id;

#ifdef FOLLOW_CHILDREN
	{
		u8 one = 1;

		id = bpf_get_current_pid_tgid();
		if (traced_tgid(id >> 32))
			targets.update(&child_pid, &one);
	}
#endif
	if (!s || !s->seq || s->ev.seq != s->seq || s->ev.child_pid)
		return;
	s->ev.child_pid = child_pid;
	id = bpf_get_current_pid_tgid();
	ev.kind = EVENT_CHILD;
	ev.pid = id >> 32;
	ev.tid = (u32)id;
	ev.seq = s->seq;
	ev.child_pid = child_pid;
	if (events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) < 0)
		count(C_LOST_RINGBUF);
}

#ifdef RAW_TP
/* Arguments as the tracepoints' C prototypes (include/trace/events/). */

RAW_TRACEPOINT_PROBE(mmap_lock_acquire_returned)
{
	/* (mm, [memcg_path before v6.14,] write, success): positions from BTF */
	on_lock_acquired(ctx->args[LOCK_MM_ARG], (u8)ctx->args[LOCK_WRITE_ARG], (u8)ctx->args[LOCK_SUCCESS_ARG]);
	return 0;
}

RAW_TRACEPOINT_PROBE(mmap_lock_released)
{
	/* (mm, [memcg_path,] write) */
	on_lock_released(ctx->args[UNLOCK_MM_ARG]);
	return 0;
}

#ifndef NO_PER_VMA
/*
 * (const char *fn, struct ma_state *mas, unsigned long piv, void *val)
 *
 * Built as a BTF-typed tracepoint (tp_btf, TYPED_MA_WRITE) where the kernel
 * allows one, else as a raw tracepoint. In the typed program the verifier
 * knows args[1] is a struct ma_state *, so mas->node is one load, not a
 * bpf_probe_read_kernel() call: that call was the largest piece of the
 * per-VMA cost (ablation in scripts/bench_overhead.py). bcc cannot load a
 * tp_btf program; bracket.py loads its bytecode through bpf(2) and attaches
 * it by the event's BTF id.
 */
#ifdef TYPED_MA_WRITE
#define MA_WRITE_ARG(n)	(ctx[n])

static __always_inline u64 ma_state_node(u64 mas)
{
	return *(u64 *)(mas + MA_STATE_NODE_OFF);
}

int ma_write_typed(u64 *ctx)
#else
#define MA_WRITE_ARG(n)	(ctx->args[n])

static __always_inline u64 ma_state_node(u64 mas)
{
	u64 node = 0;

	bpf_probe_read_kernel(&node, sizeof(node), (void *)(mas + MA_STATE_NODE_OFF));
	return node;
}

RAW_TRACEPOINT_PROBE(ma_write)
#endif
{
	struct vma_agg *a = current_agg();
	u64 leaf = 0;

	if (!a)
		return 0;
#ifndef ABLATE_VMA_BODY
#ifndef ABLATE_MA_STATE
	leaf = ma_state_node(MA_WRITE_ARG(MA_WRITE_MAS_ARG));
#endif
	on_ma_write(a, MA_WRITE_ARG(MA_WRITE_FN_ARG), leaf, MA_WRITE_ARG(MA_WRITE_VAL_ARG));
#endif
	return 0;
}
#endif /* NO_PER_VMA */

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	/* (struct task_struct *parent, struct task_struct *child) */
	u32 child_pid = 0;

	bpf_probe_read_kernel(&child_pid, sizeof(child_pid), (void *)(ctx->args[FORK_CHILD_ARG] + TASK_PID_OFF));
	on_fork(child_pid);
	return 0;
}

RAW_TRACEPOINT_PROBE(sched_switch)
{
	/* (bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state) */
	u32 next_pid = 0;
	s64 *n;

	on_switch_out();
	n = parked_count();
	if (!n)
		return 0;
	bpf_probe_read_kernel(&next_pid, sizeof(next_pid), (void *)(ctx->args[SWITCH_NEXT_ARG] + TASK_PID_OFF));
	on_switch_in(n, next_pid);
	return 0;
}

#else /* classic tracepoints: fields as in events/<sys>/<name>/format */

TRACEPOINT_PROBE(mmap_lock, mmap_lock_acquire_returned)
{
	on_lock_acquired((u64)args->mm, args->write, args->success);
	return 0;
}

TRACEPOINT_PROBE(mmap_lock, mmap_lock_released)
{
	on_lock_released((u64)args->mm);
	return 0;
}

#ifndef NO_PER_VMA
TRACEPOINT_PROBE(maple_tree, ma_write)
{
	struct vma_agg *a = current_agg();

	if (!a)
		return 0;
#ifndef ABLATE_VMA_BODY
#ifdef ABLATE_MA_STATE
	on_ma_write(a, (u64)args->fn, 0, (u64)args->val);
#else
	on_ma_write(a, (u64)args->fn, (u64)args->node, (u64)args->val);
#endif
#endif
	return 0;
}
#endif

TRACEPOINT_PROBE(sched, sched_process_fork)
{
	on_fork(args->child_pid);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
	s64 *n;

	on_switch_out();	/* current is still prev */
	n = parked_count();
	if (n)
		on_switch_in(n, args->next_pid);
	return 0;
}

#endif /* RAW_TP */

#ifdef SAMPLE
/* cpu-clock samples, kept only while the sampled thread is inside dup_mmap(). */
int on_sample(struct bpf_perf_event_data *ctx)
{
	struct thread_state *s = current_state(0);
	struct sample_key key = {};

	if (!s || s->state < IN_DUP)
		return 0;
	if (s->state == CHILD_UNLOCKED)
		key.phase = SAMPLE_TAIL;
	else
		key.phase = agg_of(s)->ts_first_store ? SAMPLE_VMA_LOOP : SAMPLE_MT_DUP;
	key.stackid = stacks.get_stackid(ctx, 0);
	if (key.stackid < 0) {
		count(C_SAMPLE_LOST);
		return 0;
	}
	count(C_SAMPLES);
	samples.increment(key);
	return 0;
}
#endif
