"""Issue 15, part 3: every notebook of the study under papermill with the gpu profile, on a GPU.

The gpu profile's parameters (hub data, the authors' BOS choice, ``device="auto"``) cut down to the
tiny random model and small caps, on a local mirror of the hub datasets in their row layouts (no
network): the same run as ``tests/test_gpu_profile.py``, whose ``small_overrides``,
``write_mirror`` and ``copy_study`` it uses, so the two cannot drift apart. It prints and writes
(``--out``) each notebook's status, seconds, and the device and dtype its run record names, and
exits 1 unless every notebook ran. About two minutes on a 2-core CPU.

    python benchmarks/gpu_study.py [--work DIR] [--out FILE] [--device auto|cuda|cpu] [--dtype bfloat16]

``--device cpu --dtype bfloat16`` runs the GPU's default dtype on a CPU: most of what bfloat16 breaks
shows up there too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    ap.add_argument("--device", default="auto", help="the study's device parameter (default auto)")
    ap.add_argument(
        "--dtype", default=None, help="the study's dtype parameter (default: bfloat16 on CUDA, else float32)"
    )
    a = ap.parse_args(argv)

    import nbformat
    import torch
    from test_gpu_profile import copy_study, small_overrides, write_mirror

    from hpr.study.runner import run_study

    work = a.work or Path(tempfile.mkdtemp(prefix="hpr-gpu-study-"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    root = copy_study(work / "study")
    os.environ["HPR_HUB_MIRROR"] = str(write_mirror(work / "mirror"))
    os.environ["HPR_CACHE_DIR"] = str(work / "cache")
    over = {**small_overrides(root / "runs" / "book", work), "device": a.device, "dtype": a.dtype}
    t0 = time.perf_counter()
    results = run_study("gpu", over, root=root, log=print)
    rows = []
    for r in results:
        rec = {}
        if r.status == "ran" and r.output is not None:
            rec = nbformat.read(r.output, as_version=4).metadata.get("hpr", {})
        rows.append(
            {
                "notebook": r.name,
                "status": r.status,
                "seconds": round(r.seconds, 1),
                "device": rec.get("device"),
                "dtype": rec.get("dtype"),
                "error": r.error[:300] or None,
                "cell": r.cell,
            }
        )
    summary = {
        "benchmark": "gpu_study_papermill",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "papermill": __import__("papermill").__version__,
        "device_parameter": a.device,
        "dtype_parameter": a.dtype,
        "total_s": round(time.perf_counter() - t0, 1),
        "notebooks": rows,
        "all_ran": bool(rows) and all(r["status"] == "ran" for r in rows),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n", encoding="utf-8")
    return 0 if summary["all_ran"] else 1


if __name__ == "__main__":
    sys.exit(main())
