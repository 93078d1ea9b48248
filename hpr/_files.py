"""Files: atomic writes, the cache directory, content hashes, the git commit of the checkout,
and the one rule that turns a model name into a folder name.

Every artifact is written to a temporary file in the destination folder and renamed into
place, so a run killed mid-way never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
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


def process_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new folder ``parent/<prefix>.<owner>.<pid>.<random>`` for files this process needs only
    while it runs (its owner removes it). What earlier processes left in ``parent`` because they
    were killed first is removed here (see :func:`sweep_dead`)."""
    return _scratch_dir(Path(parent), slug(prefix))


def staging_dir(dest: str | os.PathLike[str]) -> Path:
    """A new hidden folder next to ``dest`` to build it in before renaming it onto ``dest``. A
    staging folder or file that a killed process left next to it is removed first."""
    path = Path(dest)
    return _scratch_dir(path.parent, f".{path.name}")


def _scratch_dir(parent: Path, stem: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=_scratch_prefix(stem), dir=_swept(parent)))


def _swept(parent: Path) -> Path:
    """``parent``, created, with what killed processes left in it removed."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep_dead(parent)
    return parent


def _scratch_prefix(stem: str) -> str:
    """``<stem>.<owner>.<pid>.``: tempfile appends 8 random characters (what :data:`_SCRATCH` reads)."""
    return f"{stem}.{_owner()}.{os.getpid()}."


# <stem>.<owner>.<pid>.<8 random chars from tempfile>[.tmp|.ipynb]; nothing else is ever swept
_SCRATCH = re.compile(r"^.+\.(?P<owner>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[a-z0-9_]{8}(?:\.tmp|\.ipynb)?$")


def sweep_dead(parent: str | os.PathLike[str]) -> None:
    """Remove the scratch folders and files (named by :func:`process_dir`, :func:`staging_dir`,
    :func:`scratch_file`) in ``parent`` whose process was killed before it could remove them:
    same host and pid namespace as this process, and the pid no longer runs. Scratch of live
    processes, of other hosts or containers sharing the folder, and any other name are kept."""
    import shutil

    owner = _owner()
    try:
        entries = list(Path(parent).iterdir())
    except OSError:  # missing, or not listable: nothing to sweep, and the write goes ahead
        return
    for entry in entries:
        m = _SCRATCH.match(entry.name)
        if not m or m["owner"] != owner or _running(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:  # another user's file in a shared folder may not be ours to remove: never fail a write
            with suppress(OSError):
                entry.unlink()


def _owner() -> str:
    """This host and its pid namespace (``<host>-<namespace inode>`` on Linux): a pid means the
    same process only within one, and containers on one host may share a host name."""
    import socket

    host = slug(socket.gethostname()).replace(".", "-")
    try:
        return f"{host}-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return host


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user counts). Always true on
    Windows, where ``os.kill`` would end the process instead of probing it."""
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: another user's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def scratch_file(dest: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A new empty hidden file next to ``dest`` (``suffix`` ``.tmp`` or ``.ipynb``) to write ``dest``
    in before renaming it onto ``dest``. Scratch that killed processes left there is removed first."""
    if suffix not in (".tmp", ".ipynb"):
        raise ValueError(f"scratch suffix {suffix!r}: use '.tmp' or '.ipynb' (the only ones swept)")
    path = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=_scratch_prefix(f".{path.name}"), suffix=suffix, dir=_swept(path.parent))
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
    return Path(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.
    A temporary file that a killed process left next to it is removed first."""
    dest = Path(path)
    tmp = scratch_file(dest)
    try:
        yield tmp
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


def write_jsonl(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
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


def tree_digest(
    root: str | os.PathLike[str],
    *,
    content: bool = True,
    skip: tuple[str, ...] = ("__pycache__",),
    suffixes: tuple[str, ...] | None = None,
) -> str:
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


def package_root() -> Path:
    """The installed ``hpr`` package folder."""
    return Path(__file__).resolve().parent


def git_commit(root: str | os.PathLike[str] | None = None) -> tuple[str, bool] | None:
    """``(commit, dirty)`` of the git checkout holding ``root`` (default: this package), or None
    outside git (an installed wheel) or without git."""
    import subprocess

    where = Path(root) if root is not None else package_root()
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head, bool(status.strip())


def slug(name: str) -> str:
    """A file-system-safe name for a model spec or any label (``org/name`` -> ``org--name``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", name.strip("/")).strip("-") or "model"
