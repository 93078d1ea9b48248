"""Time ``make book`` from a fresh clone and write ``benchmarks/results/book_time.json``.

Clones this repository's HEAD into ``--workdir`` (default: a sibling folder ``hpr-book-timing``;
``../shared/data`` of this checkout is passed as ``HPR_DATA_DIR`` when it exists), gives it empty hpr caches
(models, activations, data; ``HPR_CACHE_DIR`` and ``HPR_MODEL_CACHE`` under the work folder) and
runs ``make book`` there. pip's own cache stays warm (the "warm install" of the target). Run it
alone: any other CPU job on the machine slows the book down. Prints the JSON it writes.

    python benchmarks/time_book.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _shown(path: str | None) -> str | None:
    """A data folder as recorded: relative to this checkout's parent when it lies there (no machine paths)."""
    if not path:
        return None
    try:
        return "../" + Path(path).resolve().relative_to(ROOT.parent.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(ROOT.parent / "hpr-book-timing"))
    ap.add_argument("--keep", action="store_true", help="keep the clone and its caches afterwards")
    a = ap.parse_args()
    work = Path(a.workdir)
    marker = work / ".hpr-book-timing"
    if work.exists():
        if not marker.is_file():
            print(
                f"{work} exists and was not made by this script; pass another --workdir "
                "(it is deleted and recreated on each run)",
                file=sys.stderr,
            )
            return 2
        shutil.rmtree(work)
    work.mkdir(parents=True)
    marker.touch()
    clone, caches = work / "repo", work / "cache"
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "HPR_CACHE_DIR": str(caches / "hpr"), "HPR_MODEL_CACHE": str(caches / "models")}
    shared = ROOT.parent / "shared" / "data"  # the clone sits one level deeper than this checkout
    if "HPR_DATA_DIR" not in env and (shared / "toxigen").is_dir():
        env["HPR_DATA_DIR"] = str(shared)
    log = work / "make-book.log"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(["make", "book"], cwd=clone, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    notebooks = {}
    import nbformat

    for nb_path in sorted((clone / "book" / "notebooks").glob("[0-9]*.ipynb")):
        meta = nbformat.read(nb_path, as_version=4).metadata
        if str(meta.get("hpr", {}).get("commit", "")).split("-")[0] != commit:
            continue  # a committed notebook that make book did not run (the extended study)
        notebooks[nb_path.stem] = meta.get("papermill", {}).get("duration")
    result = {
        "command": "make book",
        "commit": commit,
        "exit_code": rc,
        "wall_s": round(wall, 1),
        "hpr_data_dir": _shown(env.get("HPR_DATA_DIR")),
        "notebook_s": notebooks,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "log": f"<workdir>/{log.name}",
    }
    from hpr import _files

    _files.write_json(ROOT / "benchmarks" / "results" / "book_time.json", result)
    print(json.dumps(result, indent=2))
    if not a.keep and rc == 0:
        shutil.rmtree(work)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
