"""Safe loading: no pickle of untrusted files, no remote code by default, data paths
confined to the data directory."""

from __future__ import annotations

import ast
import hashlib
import inspect
import io as _io
import json
import os
import pickle
import tarfile
from pathlib import Path

import pytest

import hpr
from hpr.data import bigbench, sources
from hpr.data import datasets as data
from hpr.errors import DataError, HPRError
from hpr.lm import models

PKG = Path(hpr.__file__).resolve().parent
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "_pickle"}


def _sources() -> list[tuple[Path, ast.Module]]:
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 10
    return [(f, ast.parse(f.read_text(encoding="utf-8"), str(f))) for f in files]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_no_unsafe_deserialisation_in_package() -> None:
    problems = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            where = f"{path.relative_to(PKG.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad = [n for n in names if n.split(".")[0] in UNSAFE_MODULES]
                if bad:
                    problems.append(f"{where}: imports {bad}")
            if not isinstance(node, ast.Call):
                continue
            fn = _dotted(node.func)
            if fn.endswith("torch.load"):
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if fn.split(".")[-1] in {"load", "loads"} and fn.split(".")[0] in {"np", "numpy"}:
                ap = _kw(node, "allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value is True:
                    problems.append(f"{where}: numpy load with allow_pickle=True")
            if fn in {"yaml.load", "yaml.unsafe_load", "yaml.full_load"}:
                problems.append(f"{where}: {fn} (use yaml.safe_load)")
            if fn in {"eval", "exec"}:
                problems.append(f"{where}: builtin {fn}()")
            trc = _kw(node, "trust_remote_code")
            if isinstance(trc, ast.Constant) and trc.value is True:
                problems.append(f"{where}: trust_remote_code=True hard-coded")
            if _kw(node, "use_safetensors") is not None:
                us = _kw(node, "use_safetensors")
                if isinstance(us, ast.Constant) and us.value is False:
                    problems.append(f"{where}: use_safetensors=False")
    assert not problems, "\n".join(problems)


def test_trust_remote_code_off_by_default() -> None:
    assert inspect.signature(models.load_model).parameters["trust_remote_code"].default is False


def _tiny_checkpoint(path: Path) -> Path:
    from tests.conftest import byte_tokenizer, tiny_llama

    tiny_llama(layers=2, hidden=32).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def test_load_model_passes_trust_remote_code_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    seen: list[object] = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a: object, **kw: object) -> object:
        seen.append(kw.get("trust_remote_code"))
        return real(*a, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = models.load_model(str(_tiny_checkpoint(tmp_path / "ckpt")))
    assert seen == [False] and model.config.hidden_size == 32


class _Evil:
    """Unpickling this object would create the file named by ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_pickled_checkpoint_is_not_executed(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Evil(str(marker))}))
    with pytest.raises(HPRError) as exc:
        models.load_model(str(ckpt))
    print(f"BADINPUT pickled .bin checkpoint: {exc.value}")
    assert "safetensors" in str(exc.value)
    assert not marker.exists(), "a pickled checkpoint ran code while loading"


# ---------------------------------------------------------------- data paths confined
def _questions(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "examples": [
                    {"Question": f"Q{i}?", "True answers": ["y"], "False answers": ["n"], "Best answer": "y"}
                    for i in range(5)
                ]
            }
        )
    )


def test_confined_refuses_dotdot(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="outside the data directory"):
        sources.confined(tmp_path / "d", "../secret.json")
    assert sources.confined(tmp_path / "d", "a/b.json") == (tmp_path / "d" / "a" / "b.json").resolve()


def test_task_file_symlink_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "questions.json"
    _questions(outside)
    root = tmp_path / "data"
    (root / "bigbench" / "truthful_qa").mkdir(parents=True)
    os.symlink(outside, root / "bigbench" / "truthful_qa" / "questions.json")
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", data_dir=root)
    assert "outside the data directory" in str(exc.value) and "keep data files" in str(exc.value)


def test_task_folder_symlink_outside_is_refused(tmp_path: Path) -> None:
    _questions(tmp_path / "outside" / "truthful_qa" / "questions.json")
    root = tmp_path / "data" / "bigbench"
    root.mkdir(parents=True)
    os.symlink(tmp_path / "outside" / "truthful_qa", root / "truthful_qa")
    with pytest.raises(DataError, match="outside the data directory"):
        data.load_split("truthfulqa", "test", data_dir=tmp_path / "data")


def test_bbq_subtask_symlink_outside_is_refused(tmp_path: Path) -> None:
    task = {"examples": [{"input": "q", "target_scores": {"a": 1, "b": 0}}] * 5}
    out = tmp_path / "outside" / "age_ambig"
    out.mkdir(parents=True)
    (out / "task.json").write_text(json.dumps(task))
    bb = tmp_path / "data" / "bigbench" / "bbq_lite_json"
    bb.mkdir(parents=True)
    os.symlink(out, bb / "age_ambig")
    with pytest.raises(DataError, match="outside the data directory"):
        data.load_split("bbq", "test", data_dir=tmp_path / "data")


def test_toxigen_prompt_symlink_outside_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("- a secret line\n")
    prompts = tmp_path / "data" / "toxigen" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "neutral_a_1k.txt").write_text("- fine\n")
    os.symlink(secret, prompts / "hate_a_1k.txt")
    with pytest.raises(DataError, match="outside the data directory"):
        data.load_split("toxigen", "test", data_dir=tmp_path / "data")


def test_local_file_inside_dir_is_read(tmp_path: Path) -> None:
    _questions(tmp_path / "data" / "truthful_qa" / "questions.json")
    assert len(data.load_dataset("truthfulqa", data_dir=tmp_path / "data").records) == 5


def test_bigbench_tarball_cannot_write_outside(tmp_path: Path) -> None:
    tarball = tmp_path / "bb.tar.xz"
    good = json.dumps({"examples": []}).encode()
    names = (
        "truthful_qa/questions.json",
        "../../../../evil.json",
        "truthful_qa/../../../evil2.json",
        "/abs/evil3.json",
    )
    with tarfile.open(tarball, "w:xz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(good)
            tar.addfile(info, _io.BytesIO(good))
        link = tarfile.TarInfo("simple_ethical_questions/task.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    sha = hashlib.sha256(good).hexdigest()
    dest = tmp_path / "x" / "cache" / "bigbench"

    def written() -> list[str]:
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink())

    # only the manifest's names are read: traversal and absolute members are ignored
    assert bigbench.extract_tasks(tarball, dest, {names[0]: sha}) == 1
    assert written() == ["bb.tar.xz", "x/cache/bigbench/truthful_qa/questions.json"]
    # a link is never followed: its name counts as missing
    with pytest.raises(DataError, match="lacks 1 task files"):
        bigbench.extract_tasks(tarball, dest, {names[0]: sha, "simple_ethical_questions/task.json": sha})
    # even a manifest naming a path outside (a damaged install) writes nothing outside
    for bad in names[1:3]:
        with pytest.raises(DataError, match="outside the data directory"):
            bigbench.extract_tasks(tarball, dest, {bad: sha})
    assert written() == ["bb.tar.xz"]
