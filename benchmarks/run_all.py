"""Run every CPU benchmark, print one JSON object, write ``benchmarks/results/cpu.json`` atomically.

Each benchmark runs in its own process (``OMP_NUM_THREADS`` = ``HPR_BENCH_THREADS``, default 2)
and prints JSON, which is collected under its name; a benchmark that fails is recorded as
``{"error": ...}`` and the others still run. ``end_to_end`` reads ``book_time.json`` (written by
whoever times ``make book``) if present, else null. ``make bench`` runs this.

    python benchmarks/run_all.py [--quick] [--skip scoring train ...] [--update] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, THREADS

HERE = Path(__file__).resolve().parent

#: name -> (script, full arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "edit_overhead": ("bench_edit.py", [], ["--seq", "64", "--repeats", "3", "--decode-repeats", "10"]),
    "capture": ("bench_capture.py", [], ["--questions", "2", "--repeats", "2"]),
    "scoring": ("bench_scoring.py", [], ["--limit", "4"]),
    "train": ("bench_train.py", [], ["--epochs", "1"]),
}


def parse_json(stdout: str) -> Any:
    """The first JSON object printed at the start of a line of ``stdout``."""
    dec = json.JSONDecoder()
    for i, line in enumerate(stdout.splitlines(keepends=True)):
        if line.startswith("{"):
            start = sum(len(x) for x in stdout.splitlines(keepends=True)[:i])
            return dec.raw_decode(stdout[start:])[0]
    raise ValueError("no JSON object in the output")


def run_one(name: str, quick: bool, timeout: float) -> dict[str, Any]:
    script, full, short = BENCHMARKS[name]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(THREADS),
        "HPR_BENCH_THREADS": str(THREADS),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, str(HERE / script), *(short if quick else full)]
    shown = " ".join(
        ["python", str((HERE / script).relative_to(ROOT)), *(short if quick else full)]
    )  # no machine paths
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "command": shown}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:], "command": shown}
    try:
        out = parse_json(proc.stdout)
    except ValueError as exc:
        return {"error": str(exc), "stdout_tail": proc.stdout[-2000:], "command": shown}
    out["benchmark_wall_s"] = wall
    out["command"] = shown
    return out


def book_time(path: Path = RESULTS / "book_time.json") -> Any:
    """The measured ``make book`` time, if someone wrote it, else None."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings, to check the suite runs")
    ap.add_argument("--skip", nargs="*", default=[], choices=sorted(BENCHMARKS))
    ap.add_argument("--out", default=None, help="default: benchmarks/results/cpu.json (quick: cpu-quick.json)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    ap.add_argument(
        "--update", action="store_true", help="keep the results of skipped benchmarks from the existing output file"
    )
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from hpr import _files

    result: dict[str, Any] = {
        "suite": "hpr CPU benchmarks",
        "quick": a.quick,
        "threads": THREADS,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(a.out) if a.out else RESULTS / ("cpu-quick.json" if a.quick else "cpu.json")
    old = json.loads(out.read_text(encoding="utf-8")) if a.update and out.is_file() else {}
    for name in BENCHMARKS:
        if name in a.skip:
            result[name] = old.get(name)
            if result[name] is not None:  # when that result was measured
                when = old.get("kept_from_earlier_run", {}).get(name, old.get("started"))
                result.setdefault("kept_from_earlier_run", {})[name] = when
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        result[name] = run_one(name, a.quick, a.timeout)
    result["end_to_end"] = {"make_book": book_time()}
    _files.write_json(out, result)
    print(json.dumps(result, indent=2, default=str))
    failed = [n for n in BENCHMARKS if isinstance(result.get(n), dict) and "error" in result[n]]
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
