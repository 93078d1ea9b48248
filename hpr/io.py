"""Atomic file writes, the cache directory, and hashes of what produced an artifact.

Every artifact is written to a temporary file in the destination folder and renamed into
place, so a run killed mid-way never leaves a half-written file behind. ``tree_digest``,
``data_fingerprint`` and ``stale_reason`` decide whether ``hpr run`` must execute a notebook again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def cache_dir() -> Path:
    """The cache root: ``$HPR_CACHE_DIR`` or ``~/.cache/hpr``."""
    root = os.environ.get("HPR_CACHE_DIR") or os.path.join(Path.home(), ".cache", "hpr")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: list[Mapping[str, Any]]) -> None:
    """Write one JSON object per line to ``path`` atomically."""
    write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save ``tensors`` as safetensors atomically (contiguous copies, no pickle)."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short sha256 of ``obj``'s canonical JSON form, for cache keys."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: str | os.PathLike[str], *, content: bool = True,
                skip: tuple[str, ...] = ("__pycache__",), suffixes: tuple[str, ...] | None = None) -> str:
    """sha256 (hex) of the files under ``root`` in sorted relative-path order.

    ``content=True`` hashes each file's bytes; ``False`` only its size and mtime (ns), which is
    cheap for large data folders. Folders named in ``skip``, hidden files and ``*.pyc`` are
    ignored; ``suffixes`` (e.g. ``(".py", ".yaml")``) keeps only those file types. A missing
    ``root`` hashes as empty.
    """
    base = Path(root)
    h = hashlib.sha256()
    files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
    for p in files:
        rel = p.relative_to(base)
        if any(part in skip for part in rel.parts) or p.name.startswith(".") or p.suffix == ".pyc":
            continue
        if suffixes is not None and p.suffix not in suffixes:
            continue
        if content:
            stamp = file_sha256(p)
        else:
            st = p.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        h.update(f"{rel.as_posix()}\0{stamp}\n".encode())
    return h.hexdigest()


# ------------------------------------------------ what produced an artifact (hpr run)
def data_fingerprint(params: Mapping[str, Any], base: Path) -> str:
    """sha256 (hex) of the data folders a study with ``params`` reads (``data_dir`` or
    ``$HPR_DATA_DIR``, resolved against ``base``; the BIG-bench cache for the default source):
    their resolved paths and their files' sizes and mtimes. Cheap; changes when the data do."""
    from .bigbench import bigbench_cache

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
_INPUT_REASONS: dict[str, str] = {"library": "library changed", "notebook": "notebook changed",
                                  "parameters": "parameters changed", "data": "data changed"}


def stale_reason(record: Mapping[str, Any], inputs: Mapping[str, str], out_dir: str, base: Path,
                 upstream_ran: Sequence[str] = ()) -> str | None:
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
