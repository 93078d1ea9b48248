"""The README's GPU table, rendered from ``benchmarks/results/gpu.json`` (what ``benchmarks/gpu.py`` wrote).

    python benchmarks/gpu_table.py            # print the table
    python benchmarks/gpu_table.py --write    # replace the table between the README's markers

Cells are median overheads over the unedited model (interleaved runs); a case or column the file
lacks is left blank (files written before a row existed). ``tests/test_gpu_table.py`` checks that the
README holds exactly this rendering of the committed file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
README = ROOT / "README.md"
START, END = "<!-- gpu-table: start (python benchmarks/gpu_table.py --write) -->", "<!-- gpu-table: end -->"

COLUMNS = {
    "hooks_only": "hooks that do nothing",
    "hpr": "HPR (library path)",
    "hpr_graphed": "HPR, `graphed=True`",
    "hpr_compiled": "HPR, `torch.compile`",
    "reference": "paper's reference design",
}


def _rows(res: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(label, section of the results, key of the unedited time in it)."""
    pre, dec, dec1 = res.get("prefill", {}), res.get("decode", {}), res.get("decode_batch1")
    shape = "x".join(str(n) for n in pre.get("shape", [])).replace("x", " x ")
    kernel = res.get("decode_kernel_time")
    kernel_sec = None
    if kernel and "seconds_per_step" in kernel:
        kernel_sec = {"median_s": kernel["seconds_per_step"], "overhead": kernel["overhead"]}
    return [
        (f"prefill {shape}, eager", pre, "median_s"),
        (f"decode, batch {dec.get('batch', '?')}, eager (host-bound)", dec, "median_s"),
        ("decode, batch 1, eager (host-bound)", dec1, "median_s"),
        (
            f"decode, batch {dec.get('batch', '?')}, whole step in a CUDA graph",
            res.get("decode_cuda_graph_step"),
            "median_s",
        ),
        (f"decode, batch {dec.get('batch', '?')}, GPU kernel time of the eager step", kernel_sec, "median_s"),
    ]


def render(res: dict[str, Any], source: str = "benchmarks/results/gpu.json") -> str:
    """The caption line and the markdown table of ``res`` (the contents of ``source``, a ``gpu.json``)."""
    used = [c for c in COLUMNS if any(c in (sec or {}).get("overhead", {}) for _, sec, _ in _rows(res))]
    lines = [
        f"{res.get('device', 'unknown device')}, {res.get('dtype', '?').removeprefix('torch.')}, "
        f"k = {res.get('k', '?')} edited layers, torch {res.get('torch', '?')}, "
        f"transformers {res.get('transformers', '?')} (`{source}`):",
        "",
        "| | unedited | " + " | ".join(COLUMNS[c] for c in used) + " |",
        "|---|---|" + "---|" * len(used),
    ]
    for label, sec, key in _rows(res):
        if not sec or "overhead" not in sec:
            continue
        base = sec[key].get("plain")
        cells = [f"{base * 1e3:.1f} ms" if base is not None else ""]
        cells += [f"{sec['overhead'][c]:+.1%}" if c in sec["overhead"] else "" for c in used]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if res.get("complete") is False:
        lines += [
            "",
            f"Incomplete run, stopped after {res.get('elapsed_s', 0):.0f} s: the rows it did not reach are missing.",
        ]
    targets = res.get("targets")
    if targets:
        met = [f"{case}: {t['overhead']:+.1%} ({t['best']})" for case, t in targets.items() if case != "target"]
        ok = all(t["met"] for case, t in targets.items() if case != "target")
        lines += [
            "",
            f"Target at most +{targets['target']:.0%} in every case: {'met' if ok else 'not met'} ({'; '.join(met)}).",
        ]
    return "\n".join(lines)


def replace_between_markers(text: str, table: str) -> str:
    """``text`` with the part between the README's markers replaced by ``table``."""
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {START!r} ... {END!r}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--write", action="store_true", help="replace the table in README.md")
    a = ap.parse_args(argv)
    path = a.results.resolve()
    source = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    table = render(json.loads(path.read_text(encoding="utf-8")), source)
    if a.write:
        README.write_text(replace_between_markers(README.read_text(encoding="utf-8"), table), encoding="utf-8")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
