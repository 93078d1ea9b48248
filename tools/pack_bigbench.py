"""Rebuild the BIG-bench task files hpr carries (``hpr/data/data_files/bigbench-1.0.0-tasks.*``).

    python tools/pack_bigbench.py SRC

SRC is the ``bigbench/benchmark_tasks`` folder of the ``bigbench==1.0.0`` sdist (sha256
``hpr.data.bigbench.BIGBENCH_SHA256``) or a byte-for-byte copy of it. Packing the same files again
gives the same archive, so a rebuild that changes no file changes nothing in git.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hpr.data.bigbench import TASKS_ARCHIVE, TASKS_MANIFEST, pack_tasks


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    sums = pack_tasks(Path(argv[0]), TASKS_ARCHIVE, TASKS_MANIFEST)
    print(f"{TASKS_ARCHIVE}: {len(sums)} task files, {TASKS_ARCHIVE.stat().st_size / 1e3:.0f} kB")
    print(f"{TASKS_MANIFEST}: their sha256")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
