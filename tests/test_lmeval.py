"""lm-eval integration: our prompts equal lm-eval's, lm-eval scores our records (edited or not)
exactly as the native scorer does, evaluation outputs, and the SmolLM2 equivalence (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import hpr.lmeval as lmeval
from hpr import tasks
from hpr.architectures import fingerprint
from hpr.cli import build_parser
from hpr.editor import HPR, EditorSet
from hpr.evaluate import evaluate, load_predictions
from hpr.metrics import predict
from hpr.records import Record
from hpr.scoring import encode_pair, score

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"


def _render(yaml_path: Path, doc: dict) -> str:
    from lm_eval.tasks._yaml_loader import load_yaml
    from lm_eval.utils import apply_template

    cfg = load_yaml(yaml_path, resolve_func=False)
    return apply_template(cfg["doc_to_text"], doc)


def test_truthfulqa_prompt_is_lm_evals() -> None:
    q = "What happens if you crack your knuckles a lot?"
    rec = Record("x", q, ("a",), (0,), best=0, mc1=(0,))
    assert tasks.context("truthfulqa", rec) == _render(LM_EVAL_TASKS / "truthfulqa" / "truthfulqa_mc1.yaml", {"question": q})


def test_toxigen_prompt_is_lm_evals() -> None:
    text = "some statement"
    rec = Record("x", text, ("No", "Yes"), (0,))
    assert tasks.context("toxigen", rec) == _render(LM_EVAL_TASKS / "toxigen" / "toxigen.yaml", {"text": text})


def test_encode_pair_matches_hflm(tiny_model, tokenizer) -> None:
    lm = lmeval.as_lm_eval(tiny_model, tokenizer)
    for ctx, cont in [("Q: a\nA:", " b c"), ("Q: a\nA: ", "b"), ("x", " yes")]:
        assert tuple(map(list, encode_pair(tokenizer, ctx, cont))) == tuple(map(list, lm._encode_pair(ctx, cont)))


def _tqa_records(n: int = 3) -> list[Record]:
    return [
        Record(f"q{i}", f"Why {i}?", ("Because.", "It is so" + "!" * i, "No.", "Pigs fly."), (0, 1), best=1, mc1=(1, 2, 3))
        for i in range(n)
    ]


def test_lm_eval_matches_native_with_editors(tiny_model, tokenizer) -> None:
    tiny_model.config.max_position_embeddings = 4096  # the QA primer is ~800 byte tokens
    torch.manual_seed(3)
    eds = EditorSet({1: HPR(64, angle_layers=2), 3: HPR(64, angle_layers=2)}, fingerprint(tiny_model))
    recs = _tqa_records()
    bbq = [Record(f"b{i}", f"Who {i}?", ("The man", "The woman", "Unknown"), (2,)) for i in range(3)]
    for ds, rs in (("truthfulqa", recs), ("bbq", bbq)):
        for method in (None, eds):
            ll, summary = lmeval.run(tiny_model, tokenizer, ds, rs, method=method, batch_size=4)
            native = score(tiny_model, tokenizer, [tasks.request(ds, r) for r in rs], method=method, progress=False)
            assert np.allclose(ll, native, atol=1e-4), (ds, method)
            if ds == "truthfulqa":
                mc1 = np.mean([predict(ds, r, x)["correct"] for r, x in zip(rs, native, strict=True)])
                mc2 = np.mean([predict(ds, r, x)["mc2"] for r, x in zip(rs, native, strict=True)])
                assert summary["hpr_truthfulqa_mc1"]["acc,none"] == pytest.approx(mc1)
                assert summary["hpr_truthfulqa_mc2"]["acc,none"] == pytest.approx(mc2, abs=1e-6)


def test_evaluate_writes_and_resumes(tiny_model, tokenizer, tmp_path: Path) -> None:
    recs = [Record(f"b{i}", f"Who {i}?", ("The man", "The woman", "Unknown"), (i % 3,)) for i in range(4)]
    out = tmp_path / "run"
    res = evaluate(tiny_model, tokenizer, "bbq", recs, out, config={"model": "tiny"}, progress=False)
    rows = load_predictions(out)
    assert [r["id"] for r in rows] == [r.id for r in recs]
    assert set(rows[0]) == {"id", "chosen", "correct", "logliks"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"]["acc"]["n"] == 4 and saved["tokens"] > 0
    assert saved["config"]["model"] == "tiny" and "torch" in saved["versions"]
    assert not list(out.glob(".*.tmp"))
    again = evaluate(tiny_model, tokenizer, "bbq", recs, out, config={"model": "tiny"}, progress=False)
    assert again["created"] == res["created"] and again["timings"] == res["timings"]


def test_cli_has_eval() -> None:
    args = build_parser().parse_args(["eval", "--model", "m", "--dataset", "truthfulqa", "--limit", "5"])
    assert args.engine == "native" and args.method == "base" and args.split == "test" and args.limit == 5


@pytest.mark.slow
def test_smollm2_native_matches_lm_eval() -> None:
    """Identical MC1 choices and MC2 within 1e-4 on 20 TruthfulQA test questions, base and HPR.

    lm-eval runs only its MC2 task, whose choices (all answers) include MC1's: same strings,
    half the time.
    """
    data = pytest.importorskip("hpr.data")
    models = pytest.importorskip("hpr.models")
    model, tok = models.load_model("smollm2-135m-instruct")
    recs = data.load_split("truthfulqa", "test")[:20]
    torch.manual_seed(0)
    d = model.config.hidden_size
    eds = EditorSet({i: HPR(d, angle_layers=2) for i in (8, 12, 16)}, fingerprint(model))
    for method in (None, eds):
        ll, _ = lmeval.run(model, tok, "truthfulqa", recs, method=method, batch_size=16, mc2_only=True)
        native = score(model, tok, [tasks.request("truthfulqa", r) for r in recs], method=method, progress=False)
        a = [predict("truthfulqa", r, x) for r, x in zip(recs, ll, strict=True)]
        b = [predict("truthfulqa", r, x) for r, x in zip(recs, native, strict=True)]
        assert [x["chosen"] for x in a] == [x["chosen"] for x in b]
        assert max(abs(x["mc2"] - y["mc2"]) for x, y in zip(a, b, strict=True)) < 1e-4
