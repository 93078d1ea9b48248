"""Nothing lost: atomic writes, a killed run leaves no half-written artifact and the rerun
resumes, caches keyed by everything that changes their content."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from hpr import _files
from hpr.data.records import Record
from hpr.editor_set import EditorSet
from hpr.lm.capture import capture

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    _files.write_json(path, {"ok": 1})

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("serialisation fails half-way")

    with pytest.raises(RuntimeError):
        with _files.atomic_path(path) as tmp:
            tmp.write_text('{"half": ')
            str(Boom())
    assert json.loads(path.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def _records(n: int = 12) -> list[Record]:
    return [
        Record(f"q{i}", f"Question number {i}?", (f"yes {i}", f"no {i}", "maybe"), (0,), {}, 0, None) for i in range(n)
    ]


def test_cache_never_reuses_a_stale_capture(tokenizer: object, tmp_path: Path) -> None:
    from tests.conftest import tiny_llama

    recs = _records(3)
    base = dict(
        dataset="d",
        split="train",
        layers=[0, 1],
        prompt_format="qa",
        seed=0,
        chat=False,
        cache_root=tmp_path,
        progress=False,
    )
    m0 = tiny_llama(seed=0, layers=2, hidden=32)
    ref = capture(m0, tokenizer, recs, **base)  # type: ignore[arg-type]
    assert capture(m0, tokenizer, recs, **base).meta["key"] == ref.meta["key"]  # type: ignore[arg-type]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    changes = [("layers", [1]), ("prompt_format", "mc-letter"), ("seed", 1), ("split", "val"), ("dataset", "e")]
    keys = {ref.meta["key"]}
    for name, value in changes:
        got = capture(m0, tokenizer, recs, **{**base, name: value})  # type: ignore[arg-type]
        assert got.meta["key"] not in keys, name
        keys.add(got.meta["key"])
    # changed data (one answer edited) and other weights under the same name
    edited = [*recs[:2], Record("q2", recs[2].prompt, ("yes 2!", "no 2", "maybe"), (0,), {}, 0, None)]
    keys.add(capture(m0, tokenizer, edited, **base).meta["key"])  # type: ignore[arg-type]
    m1 = tiny_llama(seed=1, layers=2, hidden=32)
    other = capture(m1, tokenizer, recs, **base)  # type: ignore[arg-type]
    assert other.meta["key"] not in keys and len(keys) == len(changes) + 2
    assert not torch.equal(other.data, ref.data)


def _checkpoint_and_data(tmp_path: Path, n: int = 30) -> tuple[Path, Path]:
    from tests.conftest import byte_tokenizer, tiny_llama

    ckpt = tmp_path / "ckpt"
    tiny_llama(layers=3, hidden=32).save_pretrained(ckpt)
    byte_tokenizer().save_pretrained(ckpt)
    q = tmp_path / "data" / "bigbench" / "truthful_qa" / "questions.json"
    q.parent.mkdir(parents=True)
    q.write_text(
        json.dumps(
            {
                "examples": [
                    {
                        "Question": f"Is {i} even?",
                        "True answers": [f"{i % 2 == 0}", "yes"],
                        "False answers": [f"{i % 2 == 1}"],
                        "Best answer": f"{i % 2 == 0}",
                    }
                    for i in range(n)
                ]
            }
        )
    )
    return ckpt, q.parents[2]


def _hpr(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpr", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _read_output(proc: subprocess.Popen[str]) -> list[str]:
    """Everything ``proc`` writes, collected by a background thread (so its pipe never fills)."""
    seen: list[str] = []
    threading.Thread(
        target=lambda: seen.extend(iter(lambda: proc.stdout.read(1), "")),  # type: ignore[union-attr]
        daemon=True,
    ).start()
    return seen


def _wait_for_output(proc: subprocess.Popen[str], seen: list[str], pattern: str, seconds: float) -> None:
    """Return once ``pattern`` (a regex) appears in the output; fail if the process exits first
    or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if re.search(pattern, "".join(seen)):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    state = "still running" if proc.poll() is None else f"exited with {proc.returncode}"
    raise AssertionError(f"{pattern!r} not in the output after {seconds} s ({state}):\n{''.join(seen)[-3000:]}")


def test_killed_train_leaves_nothing_half_written_and_rerun_resumes(tmp_path: Path) -> None:
    ckpt, data_dir = _checkpoint_and_data(tmp_path)
    cache = tmp_path / "cache"
    env = {**os.environ, "HPR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "editors"
    args = [
        "train",
        "--model",
        str(ckpt),
        "--dataset",
        "truthfulqa",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--k",
        "2",
        "--prompt-format",
        "qa",
    ]
    proc = _hpr([*args, "--epochs", "3000"], env)  # long training: the kill lands mid-run
    acts = cache / "activations"
    seen = _read_output(proc)
    _wait_for_output(proc, seen, r"train epoch 2/3000", 120)  # both captures done, one epoch trained
    assert proc.poll() is None, "".join(seen)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    # no half-written artifact: the editor dir was never written, finished captures are complete
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    done = sorted(acts.glob("*.safetensors"))
    assert len(done) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    from hpr.lm.capture import Captured

    assert all(Captured.load(p).num_tokens > 0 for p in done)
    # the rerun reuses the finished captures (resume) and completes
    rerun = _hpr([*args, "--epochs", "1"], env)
    log = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, log
    assert {p.name: p.stat().st_mtime_ns for p in acts.glob("*.safetensors")} == stamps
    assert EditorSet.load(out).selected
    leftovers = [p.name for p in [*out.iterdir(), *acts.iterdir()] if p.name.endswith(".tmp")]
    assert leftovers == [] or all(p.startswith(".") for p in leftovers)


def test_killed_eval_leaves_no_results_and_rerun_resumes(tmp_path: Path) -> None:
    ckpt, data_dir = _checkpoint_and_data(tmp_path, n=500)
    env = {**os.environ, "HPR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "eval"
    args = [
        "eval",
        "--model",
        str(ckpt),
        "--dataset",
        "truthfulqa",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--batch-size",
        "1",
    ]
    proc = _hpr(args, env)
    seen = _read_output(proc)
    _wait_for_output(proc, seen, r"scoring: .*\| *[1-9]\d*/\d+", 120)  # some test questions scored
    assert proc.poll() is None, "".join(seen)  # still scoring when killed
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (out / "results.json").exists() and not (out / "predictions.jsonl").exists()
    rerun = _hpr(args, env)
    log = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, log
    first = json.loads((out / "results.json").read_text())
    assert first["metrics"]
    again = _hpr(args, env)  # a finished run is returned as is
    again.communicate(timeout=300)
    assert json.loads((out / "results.json").read_text())["created"] == first["created"]


def _killed_child(code: str, *args: str) -> list[Path]:
    """Run ``code`` in a child Python that prints paths, then SIGKILLs itself; return the paths."""
    code += "; import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return [Path(line) for line in proc.stdout.split()]


def _bystanders(parent: Path, owner: str, stem: str) -> list[Path]:
    """Scratch names that no sweep may remove: a live process's, another host's, another pid
    namespace's (a container on this host) and a name not made by ``_files``."""
    dead = "999999999"  # no such pid here
    names = [
        f"{stem}.{owner}.{os.getppid()}.abcd_123",  # the process that started pytest runs
        f"{stem}.{owner}x.{dead}.abcd_123",
        f"{stem}.{owner.rsplit('-', 1)[0]}-1.{dead}.abcd_123",
        f"{stem}.{owner}.{dead}.abc",
        "keep-me",
    ]
    for name in names:
        (parent / name).mkdir(parents=True)
    return [parent / n for n in names]


def test_process_dir_removes_what_killed_processes_left(tmp_path: Path) -> None:
    """A process killed with SIGKILL cannot remove its scratch folder (the study's offload folder);
    the next ``process_dir`` under the same parent removes it, and keeps the folders of live
    processes, of other hosts or containers sharing the cache, and anything it did not name."""
    parent = tmp_path / "offload"
    (killed,) = _killed_child(
        "import sys; from hpr import _files; "
        "d = _files.process_dir(sys.argv[1], 'org/model'); (d / 'w.safetensors').write_bytes(b'x'); print(d)",
        str(parent),
    )
    assert killed.parent == parent and (killed / "w.safetensors").is_file()
    assert killed.name.startswith("org--model.")
    owner = killed.name.rsplit(".", 3)[1]
    assert owner == _files._owner()
    keep = _bystanders(parent, owner, "m")
    mine = _files.process_dir(parent, "org/model")
    assert not killed.exists()
    assert all(k.is_dir() for k in keep)
    assert mine.is_dir() and mine.name.rsplit(".", 3)[2] == str(os.getpid())
    assert _files.process_dir(parent, "org/model").is_dir() and mine.is_dir()  # its own folder stays


def test_staging_left_by_a_killed_process_is_swept(tmp_path: Path) -> None:
    """A process killed while it builds a cache folder (``staging_dir``: the dequantized model, the
    tiny model) or writes an artifact (``atomic_path``) leaves a hidden scratch entry next to the
    destination; the next staging or atomic write in that folder removes it, nothing else."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    stage, tmp = _killed_child(
        "import sys; from pathlib import Path; from hpr import _files; "
        "d = _files.staging_dir(Path(sys.argv[1]) / 'smollm2-abc'); (d / 'model.safetensors').write_bytes(b'w'); "
        "cm = _files.atomic_path(Path(sys.argv[2]) / 'results.json'); t = cm.__enter__(); t.write_text('{'); "
        "print(d, t)",
        str(models),
        str(runs),
    )
    assert stage.parent == models and stage.name.startswith(".smollm2-abc.") and (stage / "model.safetensors").is_file()
    assert tmp.parent == runs and tmp.name.startswith(".results.json.") and tmp.name.endswith(".tmp")
    keep = _bystanders(models, _files._owner(), ".smollm2-abc") + _bystanders(runs, _files._owner(), ".results.json")

    _files.write_json(runs / "results.json", {"ok": 1})
    assert not tmp.exists() and json.loads((runs / "results.json").read_text()) == {"ok": 1}
    assert stage.exists()  # only the folder written to is swept
    fresh = _files.staging_dir(models / "smollm2-abc")
    assert not stage.exists() and fresh.is_dir() and fresh.name.startswith(".smollm2-abc.")
    assert all(k.is_dir() for k in keep)
    _files.sweep_dead(tmp_path / "missing")  # a folder not made yet has nothing to sweep


def test_process_of_another_user_counts_as_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.kill(pid, 0)`` on another user's process raises PermissionError: that process runs, so
    its folder is kept; only "no such process" means it is gone."""

    def kill(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted") if pid == 1 else ProcessLookupError(3, "No such process")

    monkeypatch.setattr(os, "kill", kill)
    assert _files._running(1) and not _files._running(2**22 + 7)


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="Linux pid namespaces only")
def test_scratch_owner_names_the_pid_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Containers on one host can share its name, and a pid names a process only within one pid
    namespace: the owner token carries both, so one container never sweeps another's scratch."""
    mine = _files._owner()
    assert mine.endswith(f"-{os.stat('/proc/self/ns/pid').st_ino}")
    real_stat = os.stat
    monkeypatch.setattr(
        os,
        "stat",
        lambda p, *a, **k: (
            os.stat_result((0, 7, 0, 0, 0, 0, 0, 0, 0, 0)) if str(p) == "/proc/self/ns/pid" else real_stat(p, *a, **k)
        ),
    )
    assert _files._owner() != mine and _files._owner().endswith("-7")


def test_gemma_assembly_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Gemma GGUF is assembled from its chunk packages into a scratch file renamed into the
    model cache: a failed assembly leaves neither a partial GGUF nor the scratch file."""
    import dataclasses
    import hashlib
    import types

    from hpr.errors import ModelError
    from hpr.lm.models import EMBEDDED, _assemble_gemma

    whole = b"GGUF" + bytes(range(256)) * 64
    fake = types.ModuleType("fake_gemma_chunks")
    fake.MODEL_NAME = "gemma-fake.gguf"  # type: ignore[attr-defined]
    fake.EXPECTED_SHA256 = hashlib.sha256(whole).hexdigest()  # type: ignore[attr-defined]
    fail = {"now": True}

    def assemble(path: Path, overwrite: bool = False) -> Path:
        assert overwrite
        with open(path, "wb") as fh:
            fh.write(whole[:1000])
            if fail["now"]:
                raise OSError("chunk 3 of 4 is missing")
            fh.write(whole[1000:])
        return Path(path)

    fake.assemble = assemble  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_gemma_chunks", fake)
    monkeypatch.setenv("HPR_MODEL_CACHE", str(tmp_path))
    emb = dataclasses.replace(EMBEDDED["gemma3-270m"], module="fake_gemma_chunks")
    with pytest.raises(ModelError, match=r"chunk 3 of 4 is missing.*pip install --force-reinstall"):
        _assemble_gemma(emb)
    assert list((tmp_path / "gguf").iterdir()) == []
    fail["now"] = False
    dest = _assemble_gemma(emb)
    assert dest == tmp_path / "gguf" / "gemma-fake.gguf" and dest.read_bytes() == whole
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == ["gemma-fake.gguf"]


def test_a_scratch_file_that_cannot_be_removed_never_fails_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed process of another user can leave a scratch file in a shared folder that this user
    may not delete (sticky bit): the sweep skips it and the write goes ahead."""
    stale = tmp_path / f".results.json.{_files._owner()}.999999999.abcd_123.tmp"
    stale.write_text("{")
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stale:
            raise PermissionError(1, "Operation not permitted", str(self))
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    _files.write_json(tmp_path / "results.json", {"ok": 1})
    assert json.loads((tmp_path / "results.json").read_text()) == {"ok": 1} and stale.exists()
