// SPDX-License-Identifier: GPL-2.0-only
/*
 * spawn: unixbench's "spawn" loop (fork; the child _exit(0)s at once; the
 * parent waitpid()s) run by a process that first gives itself --vmas extra
 * VMAs that cannot merge, so that every fork's dup_mmap() has that many more
 * VMAs to copy: separated by holes (--layout gapped, the default, as in the
 * thread's benchmark) or side by side (--layout adjacent).
 *
 * It talks to its launcher (tracer/workload/spawn.py) in lines:
 *
 *   stdout  "ready <pid> <vmas_total>"  the extra VMAs exist, no fork yet
 *   stdin   "go"                        the tracer is attached and has read
 *                                       /proc/<pid>/maps
 *   stdout  {"forks": ..., ...}         one JSON line when the loop ends
 *
 * vmas_total is mm->map_count: the lines of /proc/self/maps minus the
 * [vsyscall] gate area, which the kernel shows there but keeps out of the
 * mm's maple tree.
 *
 * Once the extra VMAs exist this program neither mallocs nor uses stdio (all
 * output goes through write(2) from stack buffers), so the layout reported at
 * "ready" is the layout every fork copies.
 *
 * Exit status: 0 after the JSON line, 2 for bad arguments, 1 for anything
 * else (mmap/munmap failure, /proc unreadable, stdin closed before "go").
 *
 * Options for designed experiments (tracer/experiment.py), each changing one
 * thing about what every fork copies; without them the program does exactly
 * what it did before they existed:
 *
 *   --order descending|scatter  gapped layout: cut the holes top-down, or in
 *                               bit-reversed order (a spread-out insertion
 *                               order): the same VMAs, a tree of other node
 *                               count, fill and height (analysis/model/history.py)
 *   --weight touch|touch-each|file
 *                               touch: as --touch (one page each, one shared
 *                               anon_vma); touch-each: one page each written
 *                               after the cuts, so every VMA has its own
 *                               anon_vma; file: the extra VMAs are private
 *                               mappings of a memfd (file-backed, untouched)
 *   --evict-mb M [--cold]       map an M MiB shared anonymous buffer (fork
 *                               copies no page table of it); with --cold, read
 *                               one byte per cache line of it right before
 *                               every fork, evicting the caches the fork would
 *                               otherwise find warm
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#define USAGE "usage: spawn [--vmas N] [--layout gapped|adjacent] [--forks N] [--seconds S] [--cpu C] [--touch] " \
	"[--order ascending|descending|scatter] [--weight none|touch|touch-each|file] [--evict-mb M [--cold]]"

/* Give up after this many fork() failures in a row (e.g. EAGAIN at RLIMIT_NPROC). */
#define MAX_CONSECUTIVE_FAILURES 1000

/* Check that the launcher is still alive every this many forks. */
#define PARENT_CHECK_INTERVAL 256

/* Write all of buf to fd; output is tiny, so a short write is retried, not buffered. */
static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* One line on stderr, "spawn: " first; formatted on the stack, no stdio buffers. */
static void say(const char *fmt, ...)
{
	char line[512];
	int len = snprintf(line, sizeof(line), "spawn: ");
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line + len, sizeof(line) - (size_t)len - 1, fmt, ap);
	va_end(ap);
	len = (int)strlen(line);
	line[len++] = '\n';
	write_all(STDERR_FILENO, line, (size_t)len);
}

#define die(status, ...) do { say(__VA_ARGS__); exit(status); } while (0)
#define bad_args(fmt, ...) die(2, fmt " (" USAGE ")", ##__VA_ARGS__)

/*
 * An argument as it may be echoed in a one-line message: at most 40
 * characters, anything unprintable (a newline above all) shown as '?'.
 */
static const char *quoted(const char *arg)
{
	static char buf[48];
	size_t i;

	for (i = 0; arg[i] && i < 40; i++)
		buf[i] = (arg[i] >= 0x20 && arg[i] < 0x7f) ? arg[i] : '?';
	if (arg[i])
		buf[i++] = '~';
	buf[i] = '\0';
	return buf;
}

/* A whole decimal number in [min, max]: digits only, no sign, no spaces. */
static long long parse_count(const char *opt, const char *arg, long long min, long long max)
{
	long long value = 0;
	const char *p;

	if (!*arg)
		bad_args("--%s needs a whole number, got an empty string", opt);
	for (p = arg; *p; p++) {
		int digit = *p - '0';

		if (digit < 0 || digit > 9)
			bad_args("--%s needs a whole number, got \"%s\"", opt, quoted(arg));
		if (value > (max - digit) / 10)
			bad_args("--%s %s is too large (at most %lld)", opt, quoted(arg), max);
		value = value * 10 + digit;
	}
	if (value < min)
		bad_args("--%s %lld is too small (at least %lld)", opt, value, min);
	return value;
}

/* Seconds as a plain decimal ("10", "0.5"): no exponent, sign, hex, inf or nan. */
static double parse_seconds(const char *arg)
{
	size_t digits = strspn(arg, "0123456789");
	size_t len = digits;
	double value;

	if (arg[len] == '.')
		len += 1 + strspn(arg + len + 1, "0123456789");
	if (len == 0 || arg[len] != '\0' || (digits == 0 && len == 1))
		bad_args("--seconds needs a decimal number, got \"%s\"", quoted(arg));
	value = strtod(arg, NULL);
	if (value <= 0 || value > 1e6)
		bad_args("--seconds %s is out of range (more than 0, at most 1000000)", quoted(arg));
	return value;
}

static uint64_t clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

/*
 * mm->map_count as /proc/self/maps shows it: count lines, leaving out the
 * [vsyscall] gate area.  Streamed through a static buffer (the file is ~80
 * bytes per VMA, several MB at vm.max_map_count), keeping the last few
 * characters of the current line to recognise the gate area's name.
 * Returns -1 if the file cannot be read.
 */
static long count_tree_vmas(void)
{
	static const char gate[] = "[vsyscall]";
	static char buf[65536];
	char tail[sizeof(gate) - 1] = { 0 };
	long lines = 0, gates = 0;
	ssize_t n;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			close(fd);
			return -1;
		}
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] == '\n') {
				lines++;
				if (!memcmp(tail, gate, sizeof(tail)))
					gates++;
				memset(tail, 0, sizeof(tail));
			} else {
				memmove(tail, tail + 1, sizeof(tail) - 1);
				tail[sizeof(tail) - 1] = buf[i];
			}
		}
	}
	close(fd);
	return lines - gates;
}

static long read_max_map_count(void)
{
	char buf[32] = { 0 };
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? strtol(buf, NULL, 10) : -1;
}

/*
 * Find a free range of span pages for nr extra VMAs (map it PROT_NONE, unmap
 * it) and map its middle span - 2 pages read-write in one go, with
 * MAP_FIXED_NOREPLACE, keeping a hole at each end: anonymous memory, or the
 * file fd (>= 0) from offset 0.  Returns the first mapped page, one page
 * above the range's start.
 */
static char *reserve_range(long nr, size_t span, size_t page, int fd)
{
	char *base, *region;

	base = mmap(NULL, span * page, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED || munmap(base, span * page))
		die(1, "cannot find %zu free pages of address space for %ld extra VMAs: %s",
		    span, nr, strerror(errno));
	region = mmap(base + page, (span - 2) * page, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_FIXED_NOREPLACE | (fd < 0 ? MAP_ANONYMOUS : 0), fd, 0);
	if (region == MAP_FAILED)
		die(1, "cannot map %zu pages for %ld extra VMAs: %s", span - 2, nr, strerror(errno));
	if (region != base + page)
		die(1, "the kernel ignored MAP_FIXED_NOREPLACE (it needs Linux 4.17 or later)");
	return region;
}

/*
 * Add nr extra VMAs that cannot merge, in a free range of 2*nr + 1 pages:
 *
 *	hole | page | hole | page | ... | page | hole
 *
 * Every kept page is its own VMA with a hole on each side, so no neighbour can
 * merge with it.  In mm->mm_mt the range takes 2*nr + 1 slots (nr VMA entries,
 * nr + 1 NULL entries; the end holes join whatever free space is next to them)
 * where the free gap it was carved from took one: two slots per extra VMA.
 *
 * The range is found first (map it PROT_NONE, unmap it) and only its middle
 * 2*nr - 1 pages are mapped, with MAP_FIXED_NOREPLACE.  Mapping in one go
 * instead lets the new VMA merge with an adjacent anonymous VMA of the same
 * flags and share its anon_vma; every piece cut from it keeps that anon_vma,
 * and each fork then pays anon_vma_fork() and unlink_anon_vmas() per VMA for
 * pages nobody touched (about 3x slower at 6400 VMAs on the 6.18 test host).
 *
 * With touch, one byte of every kept page is written before the range is cut
 * up, so all extra VMAs share one anon_vma and hold one resident page each:
 * fork then has anon_vma_fork() and copy_page_range() work per VMA.  Without
 * it (unixbench's case) they have no anon_vma and copy_page_range() skips them.
 */
enum order { ORDER_ASCENDING, ORDER_DESCENDING, ORDER_SCATTER };
enum weight { WEIGHT_NONE, WEIGHT_TOUCH, WEIGHT_TOUCH_EACH, WEIGHT_FILE };

/*
 * Which hole to cut at step v of an order over k holes, or k (none: skip this
 * step): ascending v; descending k-1-v; scatter v's bits reversed over the
 * bits k - 1 needs, so successive cuts land far apart (0, k/2, k/4, 3k/4, ...).
 * Steps run from 0 to 2^bits - 1.  No memory is allocated (the layout at
 * "ready" must be the extra VMAs and nothing else new).  Written as
 * analysis/model/history.py's hole_order() is, which replays it.
 */
static size_t hole_at(size_t v, size_t k, int bits, enum order order)
{
	size_t r = 0;

	if (order == ORDER_ASCENDING)
		return v < k ? v : k;
	if (order == ORDER_DESCENDING)
		return v < k ? k - 1 - v : k;
	for (int b = 0; b < bits; b++)
		r |= ((v >> b) & 1) << (bits - 1 - b);
	return r < k ? r : k;
}

/* A memfd of `pages` pages (sparse) to map the extra VMAs from, for --weight file. */
static int extra_file(size_t pages, size_t page)
{
	int fd = memfd_create("forktrace-spawn", MFD_CLOEXEC);

	if (fd < 0 || ftruncate(fd, (off_t)(pages * page)))
		die(1, "cannot make a memfd for file-backed extra VMAs: %s", strerror(errno));
	return fd;
}

static void make_extra_vmas(long nr, int touch, enum order order, enum weight weight)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t span = 2 * (size_t)nr + 1;	/* pages, both end holes included */
	size_t holes = (size_t)nr - 1, cut = 0;
	int bits = 0;
	char *base;

	if (nr == 0)
		return;
	int fd = weight == WEIGHT_FILE ? extra_file(span, page) : -1;

	base = reserve_range(nr, span, page, fd) - page;
	if (fd >= 0)
		close(fd);	/* the mapping holds the file */
	if (touch)
		for (size_t i = 1; i < span; i += 2)
			base[i * page] = 1;
	while (((size_t)1 << bits) < holes)
		bits++;
	for (size_t v = 0; v < ((size_t)1 << bits); v++) {
		size_t h = hole_at(v, holes, bits, order), i = 2 + 2 * h;

		if (h == holes)
			continue;
		cut++;
		if (munmap(base + i * page, page) == 0)
			continue;
		if (errno == ENOMEM)
			die(1, "cannot create %ld extra VMAs: the kernel refused a new VMA "
			    "after %zu (ENOMEM); vm.max_map_count is %ld, counting the VMAs "
			    "the process already had", nr, cut - 1, read_max_map_count());
		die(1, "munmap of page %zu of the extra-VMA range failed: %s", i, strerror(errno));
	}
	if (weight == WEIGHT_TOUCH_EACH)
		for (size_t i = 1; i < span; i += 2)
			base[i * page] = 1;
}

/*
 * The adjacent layout: nr extra one-page VMAs with no hole between them,
 * kept apart by alternating protections (read-write, read-only, ...), in a
 * free range of nr + 2 pages:
 *
 *	hole | rw | r | rw | r | ... | hole
 *
 * In mm->mm_mt the range takes nr + 1 slots (nr VMAs, one NULL entry for the
 * upper hole; the lower one joins the free gap below) where the free gap took
 * one: one slot per extra VMA instead of two. Made as the gapped layout is
 * (reserve_range(): find the range, map its middle in one go), then mprotect() of pages 1, 3,
 * 5, ... ascending: each splits the still unsplit remainder, as
 * analysis/model/history.py replays.
 */
static void make_adjacent_vmas(long nr, int touch)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t span = (size_t)nr + 2;	/* pages, both end holes included */
	char *region;

	if (nr == 0)
		return;
	region = reserve_range(nr, span, page, -1);
	if (touch)
		for (long i = 0; i < nr; i++)
			region[(size_t)i * page] = 1;
	for (long i = 1; i < nr; i += 2) {
		if (mprotect(region + (size_t)i * page, page, PROT_READ) == 0)
			continue;
		if (errno == ENOMEM)
			die(1, "cannot create %ld extra VMAs: the kernel refused a new VMA "
			    "after %ld (ENOMEM); vm.max_map_count is %ld, counting the VMAs "
			    "the process already had", nr, i, read_max_map_count());
		die(1, "mprotect of page %ld of the extra-VMA range failed: %s", i, strerror(errno));
	}
}

/* SIGTERM ends the loop after the current fork; the result line is still printed. */
static volatile sig_atomic_t stop_requested;

static void request_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

/* Block until the launcher writes "go"; EOF means it gave up, so do not fork. */
static void wait_for_go(void)
{
	char line[64];
	size_t len = 0;
	char c;

	for (;;) {
		ssize_t n = read(STDIN_FILENO, &c, 1);

		if (n < 0 && errno == EINTR && stop_requested)
			die(1, "stopped (SIGTERM) before \"go\"; exiting without forking");
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die(1, "stdin closed before \"go\"; exiting without forking");
		if (c == '\n')
			break;
		if (len < sizeof(line) - 1)
			line[len++] = c;
	}
	line[len] = '\0';
	if (strcmp(line, "go") != 0)
		die(2, "expected \"go\" on stdin, got \"%s\"", quoted(line));
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "vmas", required_argument, NULL, 'v' },
		{ "forks", required_argument, NULL, 'f' },
		{ "seconds", required_argument, NULL, 's' },
		{ "cpu", required_argument, NULL, 'c' },
		{ "touch", no_argument, NULL, 't' },
		{ "layout", required_argument, NULL, 'l' },
		{ "order", required_argument, NULL, 'o' },
		{ "weight", required_argument, NULL, 'w' },
		{ "evict-mb", required_argument, NULL, 'e' },
		{ "cold", no_argument, NULL, 'C' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	long vmas = 0, cpu = -1;
	long long max_forks = 0, forks = 0, failed = 0, consecutive_failures = 0;
	double seconds = 0;
	int touch = 0, adjacent = 0, fork_errno = 0, opt, cold = 0;
	enum order order = ORDER_ASCENDING;
	enum weight weight = WEIGHT_NONE;
	long evict_mb = 0;
	volatile char *evict = NULL;
	size_t evict_bytes = 0;
	const char *stop = "forks";
	uint64_t start, deadline, elapsed, cpu_start, cpu_used;
	long vmas_total;
	pid_t launcher = getppid();
	char line[256];
	int len;

	/*
	 * Die with the launcher, even by SIGKILL: SIGTERM is a stop request (the
	 * loop ends after the current fork). Had the launcher died before this
	 * call, stdin is already at EOF and wait_for_go() exits without forking.
	 */
	prctl(PR_SET_PDEATHSIG, SIGTERM);

	opterr = 0; /* report problems ourselves, as one line */
	while ((opt = getopt_long(argc, argv, ":", options, NULL)) != -1) {
		switch (opt) {
		case 'v':
			vmas = (long)parse_count("vmas", optarg, 0, 1L << 24);
			break;
		case 'f':
			max_forks = parse_count("forks", optarg, 1, 1LL << 62);
			break;
		case 's':
			seconds = parse_seconds(optarg);
			break;
		case 'c':
			cpu = (long)parse_count("cpu", optarg, 0, CPU_SETSIZE - 1);
			break;
		case 't':
			touch = 1;
			break;
		case 'l':
			if (!strcmp(optarg, "adjacent"))
				adjacent = 1;
			else if (strcmp(optarg, "gapped"))
				bad_args("--layout must be gapped or adjacent, got \"%s\"", quoted(optarg));
			break;
		case 'o':
			if (!strcmp(optarg, "ascending"))
				order = ORDER_ASCENDING;
			else if (!strcmp(optarg, "descending"))
				order = ORDER_DESCENDING;
			else if (!strcmp(optarg, "scatter"))
				order = ORDER_SCATTER;
			else
				bad_args("--order must be ascending, descending or scatter, got \"%s\"", quoted(optarg));
			break;
		case 'w':
			if (!strcmp(optarg, "none"))
				weight = WEIGHT_NONE;
			else if (!strcmp(optarg, "touch"))
				weight = WEIGHT_TOUCH;
			else if (!strcmp(optarg, "touch-each"))
				weight = WEIGHT_TOUCH_EACH;
			else if (!strcmp(optarg, "file"))
				weight = WEIGHT_FILE;
			else
				bad_args("--weight must be none, touch, touch-each or file, got \"%s\"", quoted(optarg));
			break;
		case 'e':
			evict_mb = (long)parse_count("evict-mb", optarg, 1, 1L << 20);
			break;
		case 'C':
			cold = 1;
			break;
		case 'h':
			printf("%s\n", USAGE);
			return 0;
		case ':':
			bad_args("%s needs a value", quoted(argv[optind - 1]));
		default:
			bad_args("unknown option \"%s\"", quoted(argv[optind - 1]));
		}
	}
	if (optind < argc)
		bad_args("unexpected argument \"%s\"", quoted(argv[optind]));
	if (!max_forks && !seconds)
		bad_args("give --forks, --seconds or both");
	if (weight == WEIGHT_TOUCH)
		touch = 1;
	if (touch && weight != WEIGHT_NONE && weight != WEIGHT_TOUCH)
		bad_args("--touch is --weight touch; it cannot be combined with another --weight");
	if (adjacent && (order != ORDER_ASCENDING || weight == WEIGHT_TOUCH_EACH || weight == WEIGHT_FILE))
		bad_args("--order, --weight touch-each and --weight file apply to the gapped layout");
	if (cold && !evict_mb)
		bad_args("--cold sweeps the --evict-mb buffer: give --evict-mb too");

	if (cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			die(2, "--cpu %ld: cannot run there (sched_setaffinity: %s)",
			    cpu, strerror(errno));
	}

	if (evict_mb) {
		/*
		 * Shared anonymous: fork copies no page table of it (vma_needs_copy()),
		 * so warm and cold runs copy the same VMAs and only the sweep differs.
		 * Mapped before the extra VMAs, as the model's history assumes of the
		 * process's own VMAs; every page written once here.
		 */
		evict_bytes = (size_t)evict_mb << 20;
		evict = mmap(NULL, evict_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (evict == MAP_FAILED)
			die(1, "cannot map the %ld MiB eviction buffer: %s", evict_mb, strerror(errno));
		memset((char *)evict, 1, evict_bytes);
	}
	if (adjacent)
		make_adjacent_vmas(vmas, touch);
	else
		make_extra_vmas(vmas, touch, order, weight);
	vmas_total = count_tree_vmas();
	if (vmas_total < 0)
		die(1, "cannot read /proc/self/maps: %s", strerror(errno));

	/* Before "ready", so a stop request can never find the default action. */
	{
		struct sigaction sa = { .sa_handler = request_stop };

		sigemptyset(&sa.sa_mask);
		sigaction(SIGTERM, &sa, NULL);
	}
	len = snprintf(line, sizeof(line), "ready %d %ld\n", (int)getpid(), vmas_total);
	write_all(STDOUT_FILENO, line, (size_t)len);
	wait_for_go();

	start = now_ns();
	cpu_start = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	deadline = seconds ? start + (uint64_t)(seconds * 1e9) : UINT64_MAX;
	for (;;) {
		pid_t child;
		int status;

		if (max_forks && forks >= max_forks)
			break;
		if (stop_requested) {
			stop = "signal";
			break;
		}
		if (now_ns() >= deadline) {
			stop = "seconds";
			break;
		}
		if (cold) {
			unsigned sum = 0;

			for (size_t i = 0; i < evict_bytes; i += 64)
				sum += evict[i];
			(void)sum;
		}
		child = fork();
		if (child == 0)
			_exit(0);
		if (child < 0) {
			failed++;
			if (!fork_errno) {
				fork_errno = errno;
				say("fork failed: %s (errno %d); counting failures and going on",
				    strerror(errno), errno);
			}
			if (++consecutive_failures >= MAX_CONSECUTIVE_FAILURES) {
				say("stopping after %d fork failures in a row", MAX_CONSECUTIVE_FAILURES);
				stop = "fork_failures";
				break;
			}
			continue;
		}
		consecutive_failures = 0;
		while (waitpid(child, &status, 0) < 0)
			if (errno != EINTR)
				die(1, "waitpid(%d) failed: %s", (int)child, strerror(errno));
		forks++;
		if (forks % PARENT_CHECK_INTERVAL == 0 && getppid() != launcher) {
			say("launcher exited; stopping");
			stop = "parent_exited";
			break;
		}
	}
	elapsed = now_ns() - start;
	cpu_used = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_start;

	len = snprintf(line, sizeof(line),
		       "{\"forks\": %lld, \"failed\": %lld, \"elapsed_ns\": %llu, "
		       "\"forks_per_sec\": %.1f, \"vmas_total\": %ld, "
		       "\"stop\": \"%s\", \"fork_errno\": %d, \"cpu_ns\": %llu}\n",
		       forks, failed, (unsigned long long)elapsed,
		       elapsed ? forks * 1e9 / (double)elapsed : 0.0, vmas_total,
		       stop, fork_errno, (unsigned long long)cpu_used);
	write_all(STDOUT_FILENO, line, (size_t)len);
	return 0;
}
