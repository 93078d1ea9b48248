"""When ``hpr run`` must execute a notebook again: a hash of what produced its artifacts (the
``hpr`` sources, the notebook, its parameters, a fingerprint of the data) against its run record,
and whether its artifacts exist."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpr._files import stable_hash, tree_digest


def data_fingerprint(params: Mapping[str, Any], base: Path) -> str:
    """sha256 (hex) of the data folders a study with ``params`` reads (``data_dir`` or
    ``$HPR_DATA_DIR``, resolved against ``base``; the BIG-bench cache for the default source):
    their resolved paths and their files' sizes and mtimes. Cheap; changes when the data do."""
    from hpr.data.bigbench import bigbench_cache

    dirs: list[Path] = []
    d = params.get("data_dir") or os.environ.get("HPR_DATA_DIR")
    if d:
        dirs.append((Path(d) if Path(d).is_absolute() else base / d).resolve())
    source = params.get("source") or os.environ.get("HPR_DATA_SOURCE")
    if source in (None, "", "bigbench") and bigbench_cache().is_dir():
        dirs.append(bigbench_cache().resolve())
    return stable_hash([[str(x), tree_digest(x, content=False)] for x in dirs], 64)


def has_artifacts(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds at least one non-empty ``*.json`` (results, editor configs)."""
    return out_dir.is_dir() and any(p.is_file() and p.stat().st_size > 0 for p in out_dir.rglob("*.json"))


#: Input name in the run record -> why a change of it re-runs the notebook.
_INPUT_REASONS: dict[str, str] = {
    "library": "library changed",
    "notebook": "notebook changed",
    "parameters": "parameters changed",
    "data": "data changed",
}


def stale_reason(
    record: Mapping[str, Any], inputs: Mapping[str, str], out_dir: str, base: Path, upstream_ran: Sequence[str] = ()
) -> str | None:
    """Why the notebook of ``record`` must run again, or None when it is up to date."""
    if not record:
        return "never ran"
    if record.get("status") != "ok":
        return "last run did not finish"
    if "inputs_sha256" not in record:
        return "run record has no inputs hash (made before input hashing)"
    old = record.get("inputs", {})
    for key, why in _INPUT_REASONS.items():
        if old.get(key) != inputs.get(key):
            return why
    if record["inputs_sha256"] != stable_hash(dict(inputs), 64):
        return "inputs changed"
    if not has_artifacts(Path(out_dir) if Path(out_dir).is_absolute() else base / out_dir):
        return f"no artifacts under {out_dir}"
    if upstream_ran:
        return f"upstream {', '.join(upstream_ran)} ran again"
    return None


__all__ = ["data_fingerprint", "has_artifacts", "stale_reason"]
