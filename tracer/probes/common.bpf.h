/* SPDX-License-Identifier: GPL-2.0 */
/*
 * common.bpf.h - the maps and helpers bracket.c, cycle.c and exact.c share.
 *
 * Each loader puts this text in front of its program's text before handing
 * it to bcc (tracer/probes/program.py); no program #includes it. bcc turns
 * map calls such as counters.lookup() into BPF helper calls only in the main
 * source text: in an #included file they stay as written, and the program
 * fails to compile ("unknown opcode 8d").
 *
 * Macros set by the loader:
 *   NR_PROBE_COUNTERS   entries of `counters`: the program's counter enum
 *                       (its loader reads the count from the program's header)
 *   FILTER_TGIDS        only trace processes in the `targets` map
 *   FOLLOW_CHILDREN     the program adds children of targets to `targets`
 */

/* Per-CPU event counters user space sums at the end; count() adds one. */
BPF_PERCPU_ARRAY(counters, u64, NR_PROBE_COUNTERS);

#if defined(FILTER_TGIDS) || defined(FOLLOW_CHILDREN)
BPF_HASH(targets, u32, u8, 10240);
#endif

static __always_inline void count(int idx)
{
	u64 *c = counters.lookup(&idx);

	if (c)
		(*c)++;
}

static __always_inline int traced_tgid(u32 tgid)
{
#ifdef FILTER_TGIDS
	return targets.lookup(&tgid) != NULL;
#else
	return 1;
#endif
}
