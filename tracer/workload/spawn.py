"""The built-in workload: unixbench's spawn loop with extra, unmergeable VMAs.

spawn.c is compiled once per source version into a user cache and run as a
child that stops between making its VMAs and its first fork, so the tracer can
attach BPF programs and snapshot /proc/PID/maps of exactly the layout every
fork will copy:

    with SpawnWorkload(vmas=6400, forks=10_000, cpu=1) as spawn:
        ready = spawn.start()            # VMAs exist, no fork yet
        ...attach probes, read_maps(ready.pid)...
        spawn.go()
        result = spawn.wait()

run_spawn() does the same without a tracer, for untraced baselines.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import select
import signal
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from analysis.errors import TracerError, UsageError

__all__ = [
    "SEED_VMAS",
    "LAYOUTS",
    "ORDERS",
    "SOURCE",
    "WEIGHTS",
    "SpawnReady",
    "SpawnResult",
    "SpawnWorkload",
    "build_spawn",
    "cache_dir",
    "check_args",
    "run_spawn",
]

SOURCE = Path(__file__).with_name("spawn.c")

# How spawn.c lays out its extra VMAs: one-page VMAs separated by one-page
# holes, or side by side with alternating protections (see spawn.c).
LAYOUTS = ("gapped", "adjacent")

# The extra VMA counts of the review thread's spawn benchmark: what sweep and
# bench run unless told otherwise.
SEED_VMAS = (0, 100, 200, 400, 800, 1600, 3200, 6400)

# Designed-experiment options (spawn.c's --order, --weight): the first of each is the default.
ORDERS = ("ascending", "descending", "scatter")
WEIGHTS = ("none", "touch", "touch-each", "file")
MAX_EVICT_MB = 1 << 20
CFLAGS = ("-O2", "-Wall")

# Seconds allowed between launch and the "ready" line. Making 65,000 VMAs
# takes well under a second; this only catches a child that hangs.
READY_TIMEOUT = 60.0

# The ranges spawn.c accepts (parse_count), checked here first so a bad value
# fails before the tracer loads BPF rather than when the workload starts.
MAX_VMAS = 1 << 24
MAX_FORKS = 1 << 62


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/forktrace, or ~/.cache/forktrace."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "forktrace"


def _compiler() -> list[str]:
    """$CC (may carry arguments, e.g. "ccache gcc") or cc from PATH."""
    cc = shlex.split(os.environ.get("CC", "")) or ["cc"]
    if shutil.which(cc[0]) is None:
        raise TracerError(
            f"no C compiler found ({cc[0]!r}) to build the spawn workload; install one: apt-get install gcc"
        )
    return cc


def build_spawn(source: Path = SOURCE, cache: Path | None = None) -> Path:
    """Compile `source` with `cc -O2` unless the cache already holds this build.

    The binary is named after a hash of the source and the compiler command, so
    editing spawn.c or changing $CC rebuilds; it is compiled under a temporary
    name and renamed into place, so a concurrent build or an interrupted one
    never leaves a half-written binary behind.
    """
    cc = _compiler()
    try:
        text = Path(source).read_bytes()
    except OSError as err:
        raise TracerError(f"cannot read the spawn workload source {source}: {err.strerror}") from None
    key = hashlib.sha256(text + b"\0" + "\0".join([*cc, *CFLAGS]).encode()).hexdigest()
    cache = Path(cache) if cache is not None else cache_dir()
    binary = cache / f"spawn-{key[:12]}"
    # Root runs this binary: the cache must be a directory no other user can write (analysis.files).
    from analysis.errors import UsageError
    from analysis.files import Directory

    try:
        Directory.open(cache, create=True, what="build cache").close()
    except UsageError as err:
        raise TracerError(str(err)) from None
    if os.access(binary, os.X_OK):
        return binary
    try:
        fd, tmp = tempfile.mkstemp(prefix=".spawn-", suffix=".tmp", dir=cache)
        os.close(fd)
    except OSError as err:
        raise TracerError(f"cannot write to the build cache {cache}: {err.strerror}") from None
    try:
        proc = subprocess.run(
            [*cc, *CFLAGS, "-o", tmp, str(source)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "error" in ln] or proc.stderr.splitlines() or ["?"]
            raise TracerError(f"compiling {source} with {' '.join(cc)} failed: {errors[0].strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    except subprocess.TimeoutExpired:
        raise TracerError(f"compiling {source} took more than 120 s; giving up") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary


class SpawnReady(NamedTuple):
    """The "ready" line: the workload's pid and its mm->map_count before any fork."""

    pid: int
    vmas_total: int


@dataclass(frozen=True, slots=True)
class SpawnResult:
    """The workload's final JSON line."""

    forks: int  # forks that succeeded (each child reaped)
    failed: int  # fork() calls that returned -1
    elapsed_ns: int  # CLOCK_MONOTONIC from "go" to the end of the loop
    forks_per_sec: float
    vmas_total: int  # mm->map_count at "ready": /proc/PID/maps lines minus [vsyscall]
    stop: str  # why the loop ended: forks, seconds, signal, fork_failures, parent_exited
    fork_errno: int  # errno of the first failed fork, 0 if none failed
    # CPU time of the forking thread over the loop (fork's own work, and the
    # tracer's programs that run in it; not the time others' load takes): what
    # the overhead bench compares on a shared machine. Optional in the line.
    cpu_ns: int = 0

    @classmethod
    def from_json(cls, line: str) -> SpawnResult:
        """Parse and type-check the workload's result line."""
        try:
            doc = json.loads(line)
            values = {f.name: doc[f.name] for f in fields(cls) if f.name in doc or f.default is MISSING}
        except (ValueError, KeyError, TypeError):
            raise TracerError(f"spawn workload printed an unexpected result line: {line[:120]!r}") from None
        for f in fields(cls):
            if f.name not in values:
                continue
            want = {"int": int, "float": (int, float), "str": str}[f.type]
            if not isinstance(values[f.name], want) or isinstance(values[f.name], bool):
                raise TracerError(f"spawn workload result has a bad {f.name!r}: {values[f.name]!r}")
        values["forks_per_sec"] = float(values["forks_per_sec"])
        return cls(**values)

    @property
    def fork_error(self) -> str | None:
        """The first fork failure as text ("Resource temporarily unavailable"), or None."""
        return os.strerror(self.fork_errno) if self.fork_errno else None


def check_args(
    vmas: int, forks: int | None, seconds: float | None, cpu: int | None, layout: str = "gapped",
    order: str = "ascending", weight: str = "none", evict_mb: int = 0, cold: bool = False,
) -> None:
    """Refuse bad arguments with a UsageError before compiling or launching (or loading BPF)."""
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if order not in ORDERS:
        raise UsageError(f"--order must be one of {', '.join(ORDERS)}, not {order!r}")
    if weight not in WEIGHTS:
        raise UsageError(f"--weight must be one of {', '.join(WEIGHTS)}, not {weight!r}")
    if layout == "adjacent" and (order != "ascending" or weight in ("touch-each", "file")):
        raise UsageError("--order, --weight touch-each and --weight file apply to the gapped layout")
    if isinstance(evict_mb, bool) or not isinstance(evict_mb, int) or not 0 <= evict_mb <= MAX_EVICT_MB:
        raise UsageError(f"--evict-mb must be a whole number of MiB from 0 to {MAX_EVICT_MB}, not {evict_mb!r}")
    if cold and not evict_mb:
        raise UsageError("--cold sweeps the eviction buffer: give --evict-mb too")

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(vmas) or vmas < 0 or vmas > MAX_VMAS:
        raise UsageError(f"--spawn needs a whole number of extra VMAs from 0 to {MAX_VMAS}, not {vmas!r}")
    max_map_count = _max_map_count()
    # The process has VMAs of its own (binary, libc, stack) besides the extra ones.
    if max_map_count is not None and vmas >= max_map_count:
        raise TracerError(f"--spawn {vmas}: vm.max_map_count is {max_map_count}, counting the VMAs the process already has")
    if forks is None and seconds is None:
        raise UsageError("the spawn workload needs --forks, a duration, or both")
    if forks is not None and (not whole(forks) or not 1 <= forks <= MAX_FORKS):
        raise UsageError(f"--forks must be a whole number from 1 to {MAX_FORKS}, not {forks!r}")
    if seconds is not None and (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or not 1e-6 <= seconds <= 1e6
    ):
        raise UsageError(f"the spawn duration must be between 0.000001 and 1000000 seconds, not {seconds!r}")
    if cpu is not None and (not whole(cpu) or cpu < 0):
        raise UsageError(f"--cpu must be a CPU number, not {cpu!r}")


def _max_map_count() -> int | None:
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None


def _failure(returncode: int, stderr: bytes, what: str) -> TracerError:
    """The child's own one-line complaint (its last stderr line) as our error."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    reason = lines[-1].removeprefix("spawn: ") if lines else f"exit status {returncode}"
    if returncode < 0:
        reason = f"killed by signal {-returncode}"
    error = UsageError if returncode == 2 else TracerError
    return error(f"spawn workload {what}: {reason}")


class SpawnWorkload:
    """The spawn loop as a child process, stopped between setup and first fork.

    A context manager: leaving the block early (an exception, Ctrl-C) kills the
    child and reaps it, so no workload outlives the tracer.
    """

    def __init__(
        self,
        vmas: int,
        forks: int | None = None,
        seconds: float | None = None,
        cpu: int | None = None,
        touch: bool = False,
        layout: str = "gapped",
        order: str = "ascending",
        weight: str = "none",
        evict_mb: int = 0,
        cold: bool = False,
    ) -> None:
        if weight == "touch":
            touch, weight = True, "none"  # one option, one spelling: --touch
        if touch and weight != "none":
            raise UsageError(f"--touch cannot be combined with --weight {weight}")
        check_args(vmas, forks, seconds, cpu, layout, order, weight, evict_mb, cold)
        self.vmas = vmas
        self.layout = layout
        self.order = order
        self.weight = weight
        self.evict_mb = evict_mb
        self.cold = cold
        self.forks = forks
        self.seconds = seconds
        self.cpu = cpu
        self.touch = touch
        self.ready: SpawnReady | None = None
        self.result: SpawnResult | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_go = False

    def argv(self, binary: Path) -> list[str]:
        """The workload's command line for `binary`."""
        args = [str(binary), "--vmas", str(self.vmas), "--layout", self.layout]
        if self.forks is not None:
            args += ["--forks", str(self.forks)]
        if self.seconds is not None:
            args += ["--seconds", f"{self.seconds:.6f}"]
        if self.cpu is not None:
            args += ["--cpu", str(self.cpu)]
        if self.touch:
            args.append("--touch")
        # Only what differs from the defaults: a default run's command line is what it always was.
        if self.order != "ascending":
            args += ["--order", self.order]
        if self.weight != "none":
            args += ["--weight", self.weight]
        if self.evict_mb:
            args += ["--evict-mb", str(self.evict_mb)]
        if self.cold:
            args.append("--cold")
        return args

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = READY_TIMEOUT) -> SpawnReady:
        """Build if needed, launch, and return once the VMAs exist (before any fork)."""
        if self._proc is not None:
            raise RuntimeError("SpawnWorkload.start() called twice")
        binary = build_spawn()
        try:
            self._proc = subprocess.Popen(
                self.argv(binary),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                # Its own session: a terminal's Ctrl-C reaches the tracer, which
                # then stops the loop with stop() and still gets the result.
                start_new_session=True,
            )
        except OSError as err:
            raise TracerError(f"cannot run the spawn workload {binary}: {err.strerror}") from None
        line = self._read_ready_line(timeout)
        if line is None:
            _, err = self._proc.communicate()
            raise _failure(self._proc.returncode, err, "did not start")
        words = line.split()
        if len(words) != 3 or words[0] != "ready" or not all(w.isdigit() for w in words[1:]):
            self.close()
            raise TracerError(f"spawn workload printed an unexpected ready line: {line[:120]!r}")
        pid, vmas_total = int(words[1]), int(words[2])
        if pid != self._proc.pid:
            self.close()
            raise TracerError(f"spawn workload reported pid {pid}, but was launched as {self._proc.pid}")
        self.ready = SpawnReady(pid, vmas_total)
        return self.ready

    def _read_ready_line(self, timeout: float) -> str | None:
        """The first stdout line, or None at EOF (the child failed before ready).

        Reads the raw pipe byte-wise under a deadline: the child writes nothing
        else until "go", so nothing is consumed that wait() needs later.
        """
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.close()
                raise TracerError(f"spawn workload did not report ready within {timeout:g} s; killed it")
            chunk = os.read(fd, 1)
            if not chunk:
                return None
            data += chunk
        return data.decode(errors="replace").strip()

    def go(self) -> None:
        """Let the fork loop run."""
        if self.ready is None or self._proc is None:
            raise RuntimeError("SpawnWorkload.go() before start()")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(b"go\n")
        except BrokenPipeError:
            _, err = self._proc.communicate()
            raise _failure(self._proc.returncode, err, "exited before go") from None
        self._started_go = True

    def stop(self) -> None:
        """Ask the loop to end after the current fork (SIGTERM); wait() then returns its result."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def finished(self) -> bool:
        """True once the process has exited: the tracer's loop polls this between ring buffer reads."""
        return self._proc is not None and self._proc.poll() is not None

    def wait(self, timeout: float | None = None) -> SpawnResult:
        """Wait for the loop to end and return its result.

        On timeout the child is killed and TracerError raised.
        """
        if not self._started_go or self._proc is None:
            raise RuntimeError("SpawnWorkload.wait() before go()")
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise TracerError(f"spawn workload did not finish within {timeout:g} s; killed it") from None
        if self._proc.returncode != 0:
            raise _failure(self._proc.returncode, err, "failed")
        lines = out.decode(errors="replace").splitlines()
        if not lines:
            raise TracerError("spawn workload exited without printing its result")
        self.result = SpawnResult.from_json(lines[-1])
        return self.result

    def close(self) -> None:
        """Kill and reap the child if it is still running; safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    def metadata(self) -> dict[str, Any]:
        """The recording's `workload` entry: what was asked and, once known, what ran."""
        meta: dict[str, Any] = {
            "kind": "spawn",
            "extra_vmas": self.vmas,
            "layout": self.layout,
            "forks_requested": self.forks,
            "seconds": self.seconds,
            "cpu": self.cpu,
            "touch": self.touch,
            "vmas_total": self.ready.vmas_total if self.ready else None,
        }
        # The designed-experiment factors, where they differ from the defaults (the model replays `order`).
        for key, value, default in (("order", self.order, "ascending"), ("weight", self.weight, "none"),
                                    ("evict_mb", self.evict_mb, 0), ("cold", self.cold, False)):
            if value != default:
                meta[key] = value
        if self.result is not None:
            meta.update(
                forks=self.result.forks,
                failed=self.result.failed,
                elapsed_ns=self.result.elapsed_ns,
                forks_per_sec=self.result.forks_per_sec,
                stop=self.result.stop,
            )
        return meta

    def __enter__(self) -> SpawnWorkload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_spawn(
    vmas: int,
    forks: int | None = None,
    seconds: float | None = None,
    cpu: int | None = None,
    touch: bool = False,
    timeout: float | None = None,
    layout: str = "gapped",
) -> SpawnResult:
    """One untraced run: start, go at once, wait (the overhead baseline)."""
    with SpawnWorkload(vmas, forks=forks, seconds=seconds, cpu=cpu, touch=touch, layout=layout) as spawn:
        spawn.start()
        spawn.go()
        return spawn.wait(timeout)
