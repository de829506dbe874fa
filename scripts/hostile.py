#!/usr/bin/env python3
"""The hostile matrix of issue 19: every writing command against an unprivileged attacker, every reader against bad inputs.

Run as root from the repository: `python scripts/hostile.py`. The attacker is
uid 65534 (setpriv) planting symbolic links to a victim file of root's, in a
directory it owns, in one every user can write (0777), and in a sticky one
(1777, as /tmp; fs.protected_symlinks is set to 0 for the run and restored,
which is system-wide). A case is OK when the victim is untouched, nothing
written is a link, and the command either worked or refused in one line with
exit 2. Readers get a FIFO, /dev/zero, deep metadata, a wrong type; OK is
one line, exit 2, within 30 s. Prints each case, then cases / OK / defects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hostile import arena, attacker_dir, can_attack, plant_links, shared_dir, symlinks_followed  # noqa: E402
from recordings import default_metadata, fork_rows, write_costed  # noqa: E402

TRACER = [sys.executable, "-m", "tracer.cli"]
results: list[tuple[str, bool, str]] = []


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run([*TRACER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def case(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'OK    ' if ok else 'DEFECT'} {name}" + (f": {detail}" if detail and not ok else ""), flush=True)


def one_line_or_ok(proc: subprocess.CompletedProcess | None, refused_code: int = 2) -> tuple[bool, str]:
    if proc is None:
        return False, "hung"
    lines = proc.stderr.strip().splitlines()
    if "Traceback" in proc.stderr:
        return False, "traceback"
    if proc.returncode == 0:
        return True, ""
    return proc.returncode == refused_code and len(lines) == 1, f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"


def writers(work: Path) -> None:
    recs = [write_costed(work / f"r{i}.parquet", 100 * (i + 1), {"stores": 300.0}, 5000.0, n=30) for i in range(2)]
    commands = {
        "sweep -o DIR --force": (lambda d: ["sweep", "-o", str(d), "--force", "--vmas", "0,70000000"],
                                 [".index.json.tmp", "index.json", "report.md", "report.json",
                                  "spawn-gapped-00000.parquet", "spawn-gapped-00000.parquet.old"]),
        "sweep -o DIR/new": (lambda d: ["sweep", "-o", str(d / "new"), "--vmas", "0,70000000"], ["new"]),
        "report --plot DIR": (lambda d: ["report", str(recs[0]), "--plot", str(d)],
                              ["attribution.png", "attribution.svg", "latency_vs_vmas.png", "per_vma_cost.svg"]),
        "compare --plot DIR/x.png": (lambda d: ["compare", str(recs[0]), str(recs[1]), "--plot", str(d / "x.png")],
                                     ["x.png"] + [f".x.png.tmp{pid}.png" for pid in range(1, 32769)]),
        "record -o DIR/x.parquet": (lambda d: ["record", "--spawn", "0", "-n", "5", "-o", str(d / "x.parquet")],
                                    ["x.parquet.old", "forktrace-saved-x.parquet"]),
    }
    for kind in ("attacker-owned", "world-writable", "sticky"):
        for name, (argv, planted) in commands.items():
            if kind == "sticky" and name.startswith(("record", "sweep")):
                continue  # these would trace (BPF); their names are checked by the same code as the others'
            with arena() as base:
                d = {"attacker-owned": lambda: attacker_dir(base),
                     "world-writable": lambda: shared_dir(base, "ww", 0o777),
                     "sticky": lambda: shared_dir(base, "tmp", 0o1777)}[kind]()
                plant_links(base / "victim", d, planted)
                proc = run(argv(d))
                ok, why = one_line_or_ok(proc)
                victim = (base / "victim").read_text() == "precious\n"
                ours = [p for p in d.rglob("*") if p.is_symlink() and p.lstat().st_uid == 0]
                case(f"{name} in {'an' if kind[0] == 'a' else 'a'} {kind} directory", ok and victim and not ours,
                     why if not ok else ("victim changed" if not victim else f"links of ours: {ours[:2]}"))


def readers(work: Path) -> None:
    import json

    import pyarrow.parquet as pq

    from analysis.recording.schema import METADATA_KEY
    from analysis.recording.writer import encode_recording

    good = write_costed(work / "good.parquet", 100, {"stores": 300.0}, 5000.0, n=30)
    fifo = work / "fifo.parquet"
    os.mkfifo(fifo)
    fifo_json = work / "fifo.json"
    os.mkfifo(fifo_json)
    fdir = work / "fifodir"
    fdir.mkdir()
    os.mkfifo(fdir / "x.parquet")
    rows = fork_rows(5)
    bad: dict[str, Path] = {}
    meta = json.dumps({**default_metadata(rows), "format_version": 2, "workload": "@@"})
    for label, value in (("deep", '{"a":' * 5000 + "1" + "}" * 5000), ("maps5", None), ("sample-list", None)):
        text = meta
        if label == "deep":
            text = meta.replace('"@@"', value)
        elif label == "maps5":
            text = json.dumps({**default_metadata(rows), "format_version": 2, "maps": 5})
        else:
            text = json.dumps({**default_metadata(rows), "format_version": 2, "sample": [1, 2]})
        path = work / f"{label}.parquet"
        pq.write_table(encode_recording(rows, {}).replace_schema_metadata({METADATA_KEY: text.encode()}), path)
        bad[label] = path
    nonjson = work / "nonjson.json"
    nonjson.write_text("not json")
    inputs = {"a FIFO": fifo, "a FIFO in a directory": fdir, **{f"metadata {k}": v for k, v in bad.items()}}
    for what, path in inputs.items():
        for name, argv in (("report", ["report", str(path)]),
                           ("report --format folded", ["report", "--format", "folded", str(path)]),
                           ("report --predict", ["report", str(good), "--predict", str(path)]),
                           ("compare", ["compare", str(good), str(path)]),
                           ("model --recording", ["model", "--recording", str(path)])):
            if name == "model --recording" and path.is_dir():
                continue
            proc = run(argv, timeout=30)
            ok, why = one_line_or_ok(proc)
            case(f"{name} of {what}", ok and proc is not None and proc.returncode == 2, why)
    for what, path in (("a FIFO", fifo), ("/dev/zero", Path("/dev/zero"))):
        proc = run(["model", "--maps", str(path)], timeout=30)
        ok, why = one_line_or_ok(proc)
        case(f"model --maps {what}", ok and proc.returncode == 2, why)
    proc = run(["compare", str(fifo_json), str(nonjson)], timeout=30)
    case("compare of a FIFO .json", one_line_or_ok(proc)[0] and proc.returncode == 2, one_line_or_ok(proc)[1])
    proc = run(["compare", str(nonjson), str(nonjson)], timeout=30)
    case("compare of a non-JSON .json says so", proc is not None and "JSON" in proc.stderr and "recordings" not in proc.stderr,
         proc.stderr.strip() if proc else "hung")


def main() -> int:
    why = can_attack()
    if why:
        print(f"hostile: {why}", file=sys.stderr)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, symlinks_followed():
        work = Path(tmp)
        writers(work)
        readers(work)
    defects = [r for r in results if not r[1]]
    print(f"\ncases {len(results)}  OK {len(results) - len(defects)}  defects {len(defects)}")
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
