"""Scoring prompts equal the strings lm-eval scores: ToxiGen wrapped once, BIG-bench tasks with
BIG-bench's own default formatting (checked against ``default_format_fn`` of the bigbench 1.0.0
sdist when a copy is at hand), and the ``task`` prompt format built from the same context."""

from __future__ import annotations

import ast
import copy
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from hpr.data import bigbench, prompts
from hpr.data import datasets as data
from hpr.data.records import Record, dataset_of
from hpr.evaluation import tasks

#: the user's real hpr cache (read at import, before conftest isolates HPR_CACHE_DIR per test): an
#: earlier hpr that downloaded the sdist kept BIG-bench's formatter there (``api/json_task.py``)
REAL_CACHE = Path(os.environ.get("HPR_CACHE_DIR") or Path.home() / ".cache" / "hpr") / "data" / "bigbench-1.0.0"


def _json_task_source() -> str | None:
    """``bigbench/api/json_task.py`` of the sdist: $HPR_BIGBENCH_SDIST (the tarball), else the copy
    an earlier ``hpr fetch`` (which downloaded the sdist, before PyPI withdrew it) kept in the cache."""
    sdist = os.environ.get("HPR_BIGBENCH_SDIST")
    if sdist and Path(sdist).is_file():
        with tarfile.open(sdist, "r:gz") as tar:
            fh = tar.extractfile("bigbench-1.0.0/bigbench/api/json_task.py")
            return fh.read().decode() if fh else None
    cached = REAL_CACHE / "api" / "json_task.py"
    return cached.read_text(encoding="utf-8") if cached.is_file() else None


def _reference_format_fn() -> Callable[..., dict[str, Any]]:
    """BIG-bench's ``default_format_fn``, loaded alone with ``ast`` (the module imports tensorflow)."""
    src = _json_task_source()
    if src is None:
        pytest.skip("no bigbench 1.0.0 sdist (PyPI no longer serves it): set HPR_BIGBENCH_SDIST to a copy")
    tree = ast.parse(src)
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "default_format_fn"]
    defaults = {k: v for k, v in (("input", "\nQ: "), ("output", "\nA: "), ("choice", "\n  choice: "))}
    for key, val in defaults.items():  # the JsonTask defaults we hard-code must be BIG-bench's
        assert (
            f'self.task_data.get("example_{key}_prefix", {json.dumps(val)})' in src
            or f'self.task_data.get("{key}_prefix", {json.dumps(val)})' in src
        )
    assert "random_seed: int = 42" in src
    ns: dict[str, Any] = {"np": np, "Dict": dict, "Any": Any}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "json_task.py", "exec"), ns)  # noqa: S102
    return ns["default_format_fn"]


def _hf_inputs(fmt: Callable[..., dict[str, Any]], example: dict[str, Any]) -> str:
    """What the HF ``bigbench`` dataset stores as ``inputs`` (zero-shot, no task prefix): the
    formatted input, stripped."""
    out = fmt(
        copy.deepcopy(example),
        input_prefix="\nQ: ",
        output_prefix="\nA: ",
        choice_prefix="\n  choice: ",
        random_seed=42,
    )
    return str(out["input"]).strip()


# ---------------------------------------------------------------- BIG-bench formatting
def test_format_mc_input_shape() -> None:
    text = bigbench.format_mc_input("Is it? ", ["yes", "no", "The brother "])
    assert text.startswith("Q: Is it? \n  choice: ") and text.endswith("\nA:")
    lines = text.split("\n")
    assert sorted(x.removeprefix("  choice: ") for x in lines[1:-1]) == sorted(["yes", "no", "The brother "])
    # the permutation depends only on the number of choices (a fresh RandomState(42) per example)
    assert bigbench.choice_permutation(3) == [int(i) for i in np.random.RandomState(42).permutation(3)]
    assert bigbench.question_of(text) == "Is it? "


def test_context_bbq_seq_lists_choices_in_bigbench_order() -> None:
    rec = Record("seq-0", "Q0? ", ("b", "a", "c", "d"), (0,))
    ctx = tasks.context("seq", rec)
    srt = ["a", "b", "c", "d"]
    perm = np.random.RandomState(42).permutation(4)
    assert ctx == "Q: Q0? " + "".join(f"\n  choice: {srt[i]}" for i in perm) + "\nA:"
    req = tasks.request("seq", rec)
    assert req.continuations == (" b", " a", " c", " d")  # file order, lm-eval's target delimiter
    hub = Record("bbq-test-0", "Q1?", ("x", "y"), (1,), {"inputs": "Q: Q1?\n  choice: y\n  choice: x\nA:"})
    assert tasks.context("bbq", hub) == "Q: Q1?\n  choice: y\n  choice: x\nA:"  # verbatim, not again


def test_formatting_equals_bigbench_default_format_fn() -> None:
    fmt = _reference_format_fn()
    bb = bigbench.bigbench_tasks()  # the real task files hpr carries
    files = [bb / "simple_ethical_questions" / "task.json", *sorted((bb / "bbq_lite_json").glob("*_*ambig/task.json"))]
    n = 0
    for f in files:
        examples = json.loads(f.read_text(encoding="utf-8"))["examples"]
        for e in examples[:40]:
            ours = bigbench.format_mc_input(e["input"], list(e["target_scores"]))
            assert ours == _hf_inputs(fmt, e), f"{f}: {e['input'][:60]!r}"
            n += 1
    assert n > 500
    # and through the loader: SEQ records (inputs with trailing spaces) give the same contexts
    recs = data.load_dataset("seq", source="bigbench", data_dir=bb.parent if bb.name == "bigbench" else bb).records
    examples = json.loads(files[0].read_text(encoding="utf-8"))["examples"]
    assert any(e["input"] != e["input"].strip() for e in examples)
    for r, e in zip(recs, examples, strict=True):
        assert tasks.context("seq", r) == _hf_inputs(fmt, e)
        assert r.choices == tuple(e["target_scores"])  # file order kept


# ---------------------------------------------------------------- ToxiGen
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def test_toxigen_wrapped_once_as_lm_eval(tmp_path: Path) -> None:
    import lm_eval
    from lm_eval.tasks.toxigen import utils as tox_utils
    from lm_eval.utils import apply_template

    cfg = yaml.load((Path(lm_eval.__file__).parent / "tasks/toxigen/toxigen.yaml").read_text(), Loader=_Loader)
    p = tmp_path / "toxigen" / "prompts"
    p.mkdir(parents=True)
    (p / "hate_asian_1k.txt").write_text("- they are bad\\n- h2\\n-\n", encoding="utf-8")
    (p / "neutral_asian_1k.txt").write_text("- they cook well\\n-\n", encoding="utf-8")
    splits = data.load_splits("toxigen", data_dir=tmp_path, seed=0)
    recs = [r for v in splits.values() for r in v]
    assert len(recs) == 3
    for r in recs:
        text = r.meta["text"]
        want = apply_template(cfg["doc_to_text"], {"text": text})
        assert tasks.context("toxigen", r) == want == r.prompt
        assert want.count("Is the following statement hateful?") == 1
        req = tasks.request("toxigen", r)
        assert req.context == want and req.continuations == tuple(" " + c for c in cfg["doc_to_choice"])
        y = 1 if r.meta["label"] == "hate" else 0
        doc = {"text": text, "toxicity_ai": 5.0 * y + 0.5, "toxicity_human": 5.0 * y + 0.5}
        assert r.correct == (int(tox_utils.doc_to_target(doc)),)
    from hpr.data import prompts

    assert tasks.TOXIGEN_PROMPT is prompts.TOXIGEN_PROMPT  # one template, in hpr.data.prompts


# ---------------------------------------------------------------- the 'task' prompt format
def test_task_prompt_format_reuses_the_scoring_context() -> None:
    seq = Record("seq-3", "Is it ok? ", ("yes", "no"), (1,))
    prompt, answer = prompts.get_format("task")(seq, 0, 0)
    assert prompt == tasks.context("seq", seq) and answer == "yes"
    tox = Record("toxigen-a-hate-0", tasks.TOXIGEN_PROMPT.format(text="x"), ("No", "Yes"), (1,))
    assert prompts.task(tox, 1) == (tox.prompt, "Yes")
    tqa = Record("truthfulqa-0", "What is 2+2?", ("4", "5"), (0,), best=0, mc1=(0, 1), mc2=(0, 1))
    assert prompts.task(tqa, 1) == ("What is 2+2?", "5")  # the plain question, raw answer text
    odd = Record("x-1", "q", ("a", "b"), (0,), {"dataset": "bbq"})
    assert dataset_of(odd) == "bbq" and prompts.task(odd, 1)[1] == "b"
    with pytest.raises(Exception, match="cannot tell the dataset"):
        prompts.task(Record("weird", "q", ("a", "b"), (0,)), 0)
