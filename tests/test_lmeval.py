"""lm-eval integration: our prompts equal lm-eval's, lm-eval's own TruthfulQA tasks and metric code
score our records as the native scorer and ``hpr.evaluation.metrics`` do (edited or not, with and without
BOS), evaluation outputs, and the SmolLM2 equivalence (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import hpr.evaluation.lmeval as lmeval
from hpr.cli import build_parser
from hpr.data.records import Record
from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.evaluation import tasks
from hpr.evaluation.evaluate import evaluate, load_predictions
from hpr.evaluation.metrics import predict, summarize
from hpr.evaluation.scoring import encode_pair, score
from hpr.lm.architectures import fingerprint
from hpr.lm.tiny import byte_tokenizer

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"


def _render(yaml_path: Path, doc: dict) -> str:
    from lm_eval.tasks._yaml_loader import load_yaml
    from lm_eval.utils import apply_template

    cfg = load_yaml(yaml_path, resolve_func=False)
    return apply_template(cfg["doc_to_text"], doc)


def test_truthfulqa_prompt_is_lm_evals() -> None:
    q = "What happens if you crack your knuckles a lot?"
    rec = Record("x", q, ("a",), (0,), best=0, mc1=(0,))
    assert tasks.context("truthfulqa", rec) == _render(
        LM_EVAL_TASKS / "truthfulqa" / "truthfulqa_mc1.yaml", {"question": q}
    )


def _tqa_tasks(records: list[Record]) -> dict:
    """lm-eval's Task objects of our TruthfulQA tasks, built on ``records``."""
    manager = lmeval.task_manager()
    with tasks.provide("truthfulqa", records):
        return manager.load(lmeval.task_specs("truthfulqa", manager))["tasks"]


def test_truthfulqa_tasks_are_lm_evals_own() -> None:
    """Prompt, choices, target and metric code of our TruthfulQA tasks are lm-eval's; only the
    documents are ours (the hub's row layout)."""
    recs = [Record("a", "Is it? Yes 'quoted'", ("No.", "Yes.", "Maybe."), (1,), best=1, mc1=(1, 0))]
    built = _tqa_tasks(recs)
    assert set(built) == {"hpr_truthfulqa_mc1", "hpr_truthfulqa_mc2"}
    mc1, mc2 = built["hpr_truthfulqa_mc1"], built["hpr_truthfulqa_mc2"]
    for t in (mc1, mc2):
        doc = list(t.eval_docs)[0]
        assert t.doc_to_text(doc) == tasks.context("truthfulqa", recs[0])
        assert t.doc_to_target(doc) == 0 and t.config.dataset_path is None
    docs1, docs2 = list(mc1.eval_docs)[0], list(mc2.eval_docs)[0]
    assert mc1.doc_to_choice(docs1) == ["Yes.", "No."]
    assert mc2.doc_to_choice(docs2) == ["No.", "Yes.", "Maybe."]
    assert docs2["mc2_targets"]["labels"] == [0, 1, 0] and docs1["mc1_targets"]["labels"] == [1, 0]
    # the oracle is lm-eval's code: MC2 is truthfulqa/utils.py, MC1 lm-eval's default accuracy
    assert mc2.config.process_results.__module__ == "lm_eval.tasks.truthfulqa.utils"
    assert mc1.config.process_results is None
    assert type(mc1).process_results.__module__.startswith("lm_eval.")


def _oracle_records() -> list[Record]:
    """TruthfulQA records whose choices have equal byte lengths, so MC2 is far from 0 and 1."""
    recs = [
        Record(
            f"q{i}",
            f"Which {i}?",
            ("Red.", "Blue", "Gray", "Tan."),
            ((0, 1), (2,), (1, 3))[i],
            best=((0, 1), (2,), (1, 3))[i][0],
            mc1=((0, 2, 3), (2, 0, 1, 3), (3, 0))[i],
        )
        for i in range(3)
    ]
    # MC2 over a subset of the choices (choices = the union of the MC1 and MC2 sets)
    recs.append(Record("q3", "Which 3?", ("Red.", "Blue", "Gray", "Tan."), (1,), best=1, mc1=(1, 3), mc2=(0, 1, 2)))
    return recs


def test_lm_eval_metric_code_equals_native_metrics(tiny_model, tokenizer) -> None:
    """lm-eval's own reported MC1/MC2 (``simple_evaluate``, ``utils.process_results_mc2``) equal
    ``hpr.evaluation.metrics`` over natively scored log-likelihoods of the same records."""
    tiny_model.config.max_position_embeddings = 4096
    recs = _oracle_records()
    ll, summary = lmeval.run(tiny_model, tokenizer, "truthfulqa", recs, batch_size=4)
    native = score(tiny_model, tokenizer, [tasks.request("truthfulqa", r) for r in recs], progress=False)
    assert np.allclose(ll, native, atol=1e-4)
    ours = summarize("truthfulqa", [predict("truthfulqa", r, x) for r, x in zip(recs, native, strict=True)])
    assert 0.05 < ours["mc2"]["value"] < 0.95  # a metric that can disagree
    assert summary["hpr_truthfulqa_mc2"]["acc,none"] == pytest.approx(ours["mc2"]["value"], abs=1e-6)
    assert summary["hpr_truthfulqa_mc1"]["acc,none"] == pytest.approx(ours["mc1"]["value"], abs=1e-6)
    assert summary["hpr_truthfulqa_mc2"]["sample_len"] == len(recs)


def test_toxigen_prompt_is_lm_evals() -> None:
    text = "some statement"
    rec = Record("x", tasks.TOXIGEN_PROMPT.format(text=text), ("No", "Yes"), (0,))  # as hpr.data.datasets wraps it
    assert tasks.context("toxigen", rec) == _render(LM_EVAL_TASKS / "toxigen" / "toxigen.yaml", {"text": text})


def bos_tokenizer():
    """The byte tokenizer, configured to add ``<bos>`` in front (as Llama's tokenizers do)."""
    from tokenizers import processors

    tok = byte_tokenizer()
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    assert tok.encode("a")[0] == bos
    return tok


def test_mc2_only_runs_mc1_when_mc2_misses_choices(tiny_model, tokenizer) -> None:
    tiny_model.config.max_position_embeddings = 4096
    recs = [Record("a", "Which?", ("Red.", "Blue", "Gray"), (1,), best=1, mc1=(1, 2), mc2=(0, 1))]
    ll, summary = lmeval.run(tiny_model, tokenizer, "truthfulqa", recs, mc2_only=True)
    assert set(summary) == {"hpr_truthfulqa_mc1", "hpr_truthfulqa_mc2"}
    native = score(tiny_model, tokenizer, [tasks.request("truthfulqa", r) for r in recs], progress=False)
    assert np.allclose(ll, native, atol=1e-4)


@pytest.mark.parametrize("adds_bos", [False, True])
@pytest.mark.parametrize("add_bos", [None, False, True])
def test_encode_pair_matches_hflm(tiny_model, adds_bos: bool, add_bos: bool | None) -> None:
    tok = bos_tokenizer() if adds_bos else byte_tokenizer()
    lm = lmeval.as_lm_eval(tiny_model, tok, add_bos=add_bos)
    for ctx, cont in [("Q: a\nA:", " b c"), ("Q: a\nA: ", "b"), ("x", " yes"), ("<bos>Q:", " y")]:
        ours = tuple(map(list, encode_pair(tok, ctx, cont, add_bos)))
        assert ours == tuple(map(list, lm._encode_pair(ctx, cont)))
        starts = ours[0][0] == tok.bos_token_id
        assert starts == (bool(add_bos) or (add_bos is None and adds_bos) or ctx.startswith("<bos>"))
        assert ours[0][:2] != [tok.bos_token_id] * 2  # never two


@pytest.mark.parametrize("add_bos", [False, True])
def test_lm_eval_matches_native_with_bos_choice(tiny_model, add_bos: bool) -> None:
    """Native and lm-eval log-likelihoods agree with and without BOS, and BOS changes them."""
    tok = bos_tokenizer()
    recs = [Record(f"b{i}", f"Who {i}?", ("The man", "The woman", "Unknown"), (2,)) for i in range(3)]
    reqs = [tasks.request("bbq", r) for r in recs]
    ll, _ = lmeval.run(tiny_model, tok, "bbq", recs, batch_size=4, add_bos=add_bos)
    native = score(tiny_model, tok, reqs, progress=False, add_bos=add_bos)
    assert np.allclose(ll, native, atol=1e-4)
    other = score(tiny_model, tok, reqs, progress=False, add_bos=not add_bos)
    assert not np.allclose(native, other, atol=1e-3)


def _tqa_records(n: int = 3) -> list[Record]:
    return [
        Record(
            f"q{i}", f"Why {i}?", ("Because.", "It is so" + "!" * i, "No.", "Pigs fly."), (0, 1), best=1, mc1=(1, 2, 3)
        )
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
    assert saved["config"]["add_bos"] is None
    assert not list(out.glob(".*.tmp"))
    again = evaluate(tiny_model, tokenizer, "bbq", recs, out, config={"model": "tiny"}, progress=False)
    assert again["created"] == res["created"] and again["timings"] == res["timings"]
    bos = evaluate(tiny_model, tokenizer, "bbq", recs, out, config={"model": "tiny"}, progress=False, add_bos=True)
    assert bos["config"]["add_bos"] is True  # a new config: scored again, with a BOS in front
    assert load_predictions(out)[0]["logliks"] != rows[0]["logliks"]


def test_cli_has_eval() -> None:
    args = build_parser().parse_args(["eval", "--model", "m", "--dataset", "truthfulqa", "--limit", "5"])
    assert args.engine == "native" and args.method == "base" and args.split == "test" and args.limit == 5


@pytest.mark.slow
def test_smollm2_native_matches_lm_eval() -> None:
    """Identical MC1 choices and MC2 within 1e-4 on 20 TruthfulQA test questions, base and HPR.

    lm-eval runs only its MC2 task, whose choices (all answers) include MC1's: same strings,
    half the time.
    """
    data = pytest.importorskip("hpr.data.datasets")
    models = pytest.importorskip("hpr.lm.models")
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
