// SPDX-License-Identifier: GPL-2.0
/*
 * cycle.c - the rest of a spawn iteration around dup_mmap(), from tracepoints.
 *
 * A fork-exit-wait iteration is more than dup_mmap(). Per fork of a traced
 * process this records, one ring buffer record each:
 *
 *   clone      raw_syscalls:sys_enter -> sys_exit of clone/clone3/fork/vfork
 *              in the parent (dup_mmap() runs inside it); its return is the
 *              child's pid
 *   exit_mmap  the child's teardown of its copy of the address space, in the
 *              child's thread (kernel v6.1+):
 *
 *                mmap_lock_acquire_returned  read,  own mm   exit_mmap() starts
 *                mmap_lock_released          read,  own mm   (unmap_vmas done)
 *                mmap_lock_acquire_returned  write, own mm   (free_pgtables, remove_vma)
 *                mmap:exit_mmap                     own mm   (before __mt_destroy)
 *                mmap_lock_released          write, own mm   exit_mmap() ends
 *
 *              exit_mm() takes and drops the read lock just before, and an
 *              exec() tears the old mm down the same way; the exit_mmap
 *              tracepoint inside the write section tells this teardown from
 *              an ordinary munmap() after a page fault.
 *   wait       raw_syscalls:sys_enter -> sys_exit of wait4/waitid that
 *              returned (reaped) the child
 *
 * User space joins them to the bracket's dup_mmap() records by child pid.
 * None of this runs inside dup_mmap()'s per-VMA loop; the only programs that
 * fire inside the bracket are the mmap_lock ones (four per fork), which look
 * up the current thread in `children` and leave.
 *
 * Syscall numbers are x86_64's (cycle.h); the loader refuses other machines.
 *
 * count(), traced_tgid() and the `counters` and `targets` maps come from
 * common.bpf.h, which the loader puts in front of this text.
 *
 * Macros set by the loader:
 *   RAW_TP              raw tracepoints (offsets below from BTF)
 *   TASK_PID_OFF        offsetof(struct task_struct, pid)   (RAW_TP)
 *   TASK_TGID_OFF       offsetof(struct task_struct, tgid)  (RAW_TP)
 *   REGS_ORIG_AX_OFF    offsetof(struct pt_regs, orig_ax)   (RAW_TP)
 *   REGS_DX_OFF         offsetof(struct pt_regs, dx)        (RAW_TP)
 *   FILTER_TGIDS        only trace processes in the `targets` map
 *   FOLLOW_CHILDREN     add children of targets to `targets`
 *   RINGBUF_PAGES       ring buffer size, in pages
 */

#include <uapi/linux/ptrace.h>

#include "cycle.h"

/* siginfo_t.si_pid on 64-bit: three ints and padding, then the union. */
#define SIGINFO_PID_OFF 16

/* A syscall of interest in flight in one thread. */
struct in_syscall {
	u64 ts;
	u64 infop;	/* waitid's siginfo_t *, where the reaped pid is written */
	u32 nr;
	u32 _pad;
};

enum child_state {
	CHILD_RUNNING = 0,
	CHILD_WRITE_LOCKED,	/* holds its mm for write: an munmap(), or exit_mmap() */
	CHILD_EXITING,		/* the exit_mmap tracepoint fired in that write section */
};

/* A child of a traced process, until its copied mm is torn down. */
struct child {
	u64 read_mm;	/* mm of its last read lock, and when it was taken */
	u64 ts_read;
	u64 write_mm;	/* mm it holds for write, and when the teardown began */
	u64 ts_start;
	u32 state;
	u32 _pad;
};

BPF_RINGBUF_OUTPUT(cycle_events, RINGBUF_PAGES);
BPF_TABLE("lru_hash", u32, struct in_syscall, syscalls, 10240);
BPF_TABLE("lru_hash", u32, struct child, children, 16384);

static __always_inline int is_clone(u64 nr)
{
	return nr == NR_CLONE || nr == NR_CLONE3 || nr == NR_FORK || nr == NR_VFORK;
}

static __always_inline int is_wait(u64 nr)
{
	return nr == NR_WAIT4 || nr == NR_WAITID;
}

/*
 * No wakeup: a wakeup is an irq_work self-interrupt, and the reader polls
 * the bracket every 100 ms and drains this buffer each time anyway.
 */
static __always_inline void emit(u32 kind, u64 start, u64 end, s32 child_pid, u32 nr, int counter)
{
	struct cycle_event ev = {};
	u64 id = bpf_get_current_pid_tgid();

	ev.ts_start = start;
	ev.ts_end = end;
	ev.kind = kind;
	ev.pid = id >> 32;
	ev.tid = (u32)id;
	ev.child_pid = child_pid;
	ev.nr = nr;
	if (cycle_events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) < 0)
		count(CC_LOST_RINGBUF);
	else
		count(counter);
}

static __always_inline void on_sys_enter(u64 nr, u64 arg2)
{
	struct in_syscall call = {};
	u64 id;
	u32 tid;

	if (!is_clone(nr) && !is_wait(nr))
		return;
	id = bpf_get_current_pid_tgid();
	if (!traced_tgid(id >> 32))
		return;
	tid = (u32)id;
	call.ts = bpf_ktime_get_ns();
	call.nr = nr;
	call.infop = nr == NR_WAITID ? arg2 : 0;
	syscalls.update(&tid, &call);
}

static __always_inline void on_sys_exit(u64 nr, s64 ret)
{
	struct in_syscall *call;
	u32 tid;
	s32 pid = 0;

	if (!is_clone(nr) && !is_wait(nr))
		return;
	tid = (u32)bpf_get_current_pid_tgid();
	call = syscalls.lookup(&tid);
	if (!call)
		return;		/* not traced, or the child's return from clone */
	if (call->nr == nr && ret >= 0) {
		u64 now = bpf_ktime_get_ns();

		if (is_clone(nr) && ret > 0) {
			emit(CYCLE_CLONE, call->ts, now, ret, nr, CC_CLONES);
		} else if (nr == NR_WAIT4 && ret > 0) {
			emit(CYCLE_WAIT, call->ts, now, ret, nr, CC_WAITS);
		} else if (nr == NR_WAITID && call->infop) {
			bpf_probe_read_user(&pid, sizeof(pid), (void *)(call->infop + SIGINFO_PID_OFF));
			if (pid > 0)	/* 0: WNOHANG and nothing to reap */
				emit(CYCLE_WAIT, call->ts, now, pid, nr, CC_WAITS);
		}
	}
	syscalls.delete(&tid);
}

static __always_inline void on_fork(u32 child_pid, u32 child_tgid)
{
	struct child c = {};
	u64 id = bpf_get_current_pid_tgid();

	if (child_pid != child_tgid || !traced_tgid(id >> 32))
		return;		/* a new thread shares the mm: nothing is copied */
#ifdef FOLLOW_CHILDREN
	{
		u8 one = 1;

		targets.update(&child_pid, &one);
	}
#endif
	children.update(&child_pid, &c);
	count(CC_CHILDREN);
}

static __always_inline void on_lock_acquired(u64 mm, int write, int success)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct child *c;

	if (!success)
		return;
	c = children.lookup(&tid);
	if (!c)
		return;
	if (!write) {
		c->read_mm = mm;
		c->ts_read = bpf_ktime_get_ns();
		return;
	}
	/* exit_mmap() drops its read lock and takes the write lock at once. */
	c->ts_start = c->read_mm == mm ? c->ts_read : bpf_ktime_get_ns();
	c->write_mm = mm;
	c->state = CHILD_WRITE_LOCKED;
}

static __always_inline void on_exit_mmap(u64 mm)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct child *c = children.lookup(&tid);

	if (c && c->state == CHILD_WRITE_LOCKED && c->write_mm == mm)
		c->state = CHILD_EXITING;
}

static __always_inline void on_lock_released(u64 mm, int write)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct child *c;

	if (!write)
		return;
	c = children.lookup(&tid);
	if (!c || c->write_mm != mm)
		return;
	if (c->state == CHILD_EXITING) {
		emit(CYCLE_EXIT_MMAP, c->ts_start, bpf_ktime_get_ns(), tid, 0, CC_EXIT_MMAPS);
		children.delete(&tid);	/* the copy is gone: an exec'd program is not followed */
		return;
	}
	c->state = CHILD_RUNNING;
}

#ifdef RAW_TP
/* Arguments as the tracepoints' C prototypes (include/trace/events/). */

RAW_TRACEPOINT_PROBE(sys_enter)
{
	/* (struct pt_regs *regs, long id) */
	u64 dx = 0;

	if (ctx->args[SYS_ENTER_ID_ARG] == NR_WAITID)
		bpf_probe_read_kernel(&dx, sizeof(dx), (void *)(ctx->args[SYS_ENTER_REGS_ARG] + REGS_DX_OFF));
	on_sys_enter(ctx->args[SYS_ENTER_ID_ARG], dx);
	return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
	/* (struct pt_regs *regs, long ret): the number is regs->orig_ax */
	u64 nr = 0;

	bpf_probe_read_kernel(&nr, sizeof(nr), (void *)(ctx->args[SYS_EXIT_REGS_ARG] + REGS_ORIG_AX_OFF));
	on_sys_exit(nr, (s64)ctx->args[SYS_EXIT_RET_ARG]);
	return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	/* (struct task_struct *parent, struct task_struct *child) */
	u32 pid = 0, tgid = 0;

	bpf_probe_read_kernel(&pid, sizeof(pid), (void *)(ctx->args[FORK_CHILD_ARG] + TASK_PID_OFF));
	bpf_probe_read_kernel(&tgid, sizeof(tgid), (void *)(ctx->args[FORK_CHILD_ARG] + TASK_TGID_OFF));
	on_fork(pid, tgid);
	return 0;
}

RAW_TRACEPOINT_PROBE(mmap_lock_acquire_returned)
{
	/* (mm, [memcg_path before v6.14,] write, success): positions from BTF */
	on_lock_acquired(ctx->args[LOCK_MM_ARG], (u8)ctx->args[LOCK_WRITE_ARG], (u8)ctx->args[LOCK_SUCCESS_ARG]);
	return 0;
}

RAW_TRACEPOINT_PROBE(mmap_lock_released)
{
	/* (mm, [memcg_path,] write) */
	on_lock_released(ctx->args[UNLOCK_MM_ARG], (u8)ctx->args[UNLOCK_WRITE_ARG]);
	return 0;
}

RAW_TRACEPOINT_PROBE(exit_mmap)
{
	/* (struct mm_struct *mm) */
	on_exit_mmap(ctx->args[EXIT_MMAP_MM_ARG]);
	return 0;
}

#else /* classic tracepoints: fields as in events/<sys>/<name>/format */

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	on_sys_enter(args->id, args->args[2]);
	return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
	on_sys_exit(args->id, args->ret);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
	/* No tgid here: a new thread is followed too, and never reaches exit_mmap. */
	on_fork(args->child_pid, args->child_pid);
	return 0;
}

TRACEPOINT_PROBE(mmap_lock, mmap_lock_acquire_returned)
{
	on_lock_acquired((u64)args->mm, args->write, args->success);
	return 0;
}

TRACEPOINT_PROBE(mmap_lock, mmap_lock_released)
{
	on_lock_released((u64)args->mm, args->write);
	return 0;
}

TRACEPOINT_PROBE(mmap, exit_mmap)
{
	on_exit_mmap((u64)args->mm);
	return 0;
}

#endif /* RAW_TP */
