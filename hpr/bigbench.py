"""Fetch the BIG-bench task files: the ``bigbench==1.0.0`` sdist from PyPI, sha256-checked,
only the needed members extracted (no path traversal, no links)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import DataError
from .io import cache_dir, write_bytes, write_json
from .sources import confined

BIGBENCH_VERSION = "1.0.0"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
_BB_PREFIX = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks/"
_BB_WANTED = re.compile(
    r"^(truthful_qa/(questions|task_mc)\.json|simple_ethical_questions/task\.json"
    r"|bbq_lite_json/[a-z_]+_(ambig|disambig)/task\.json)$"
)
_DONE = ".hpr_complete.json"


# ---------------------------------------------------------------- fetching BIG-bench
def bigbench_cache() -> Path:
    """Where the extracted BIG-bench task files live (``cache_dir()/data/bigbench-1.0.0``)."""
    return cache_dir() / "data" / f"bigbench-{BIGBENCH_VERSION}"


def _index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")


def _sdist_url() -> str:
    name = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
    req = urllib.request.Request(f"{_index_url()}/bigbench/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        index = json.load(r)
    for f in index.get("files", []):
        if f.get("filename") == name:
            return str(f["url"])
    raise DataError(f"{name} is not listed by {_index_url()}; set PIP_INDEX_URL to a PyPI mirror that has it")


def fetch_bigbench(progress: Callable[[str], None] | None = None) -> Path:
    """Download the ``bigbench==1.0.0`` sdist from PyPI, verify its sha256, extract only the needed
    task files into ``bigbench_cache()/bigbench`` and return that folder. Reruns are no-ops.

    ``pip download`` cannot fetch this sdist (pip rejects its direct-URL dependency while preparing
    metadata), so the file is read from the PyPI simple index (PEP 691) that pip itself uses.
    """
    say = progress or (lambda s: None)
    dest = bigbench_cache()
    if (dest / _DONE).is_file():
        return dest / "bigbench"
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".bigbench-", suffix=".tar.gz", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            url = _sdist_url()
            say(f"downloading {url}")
            h = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as out:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="bigbench sdist") as bar:
                    while block := r.read(1 << 20):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
        except OSError as exc:
            raise DataError(
                f"cannot download bigbench=={BIGBENCH_VERSION} from {_index_url()} ({exc}); check the "
                "network or PIP_INDEX_URL, or pass --data-dir / HPR_DATA_DIR with the task files"
            ) from exc
        if h.hexdigest() != BIGBENCH_SHA256:
            raise DataError(f"bigbench sdist sha256 {h.hexdigest()} != expected {BIGBENCH_SHA256}; "
                            "the download is corrupt or tampered: rerun `hpr fetch`")
        say(f"sha256 verified; extracting task files into {dest}")
        n = extract_bigbench(tmp, dest)
        write_json(dest / _DONE, {"sha256": BIGBENCH_SHA256, "files": n})
    finally:
        tmp.unlink(missing_ok=True)
    return dest / "bigbench"


def extract_bigbench(tarball: Path, dest: Path) -> int:
    """Extract the needed BIG-bench members of ``tarball`` under ``dest/bigbench`` (regular files
    only, names checked against a whitelist, so no path traversal). Returns the number written."""
    n = 0
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for m in tar:
                if not m.name.startswith(_BB_PREFIX) or not m.isfile():
                    continue
                rel = m.name[len(_BB_PREFIX):]
                if not _BB_WANTED.match(rel) or ".." in rel.split("/"):
                    continue
                fh = tar.extractfile(m)
                if fh is None:
                    continue
                write_bytes(confined(dest / "bigbench", rel), fh.read())
                n += 1
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise DataError(f"cannot read {tarball} ({exc}); delete it and rerun `hpr fetch`") from exc
    if n == 0:
        raise DataError(f"{tarball} holds none of the BIG-bench task files; is it bigbench-{BIGBENCH_VERSION}?")
    return n

