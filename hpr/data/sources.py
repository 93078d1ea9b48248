"""Raw data files: locating them safely and parsing each original format (the BIG-bench
task files hpr carries are ``hpr.data.bigbench``).

Parsers return plain ``Item`` tuples in file order; ``hpr.data.datasets`` turns them into Records and
splits. Every problem raises ``DataError`` naming the file and the fix.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpr.errors import DataError


@dataclass
class Item:
    """One parsed example before splitting: ``correct`` indexes ``choices``; ``best``, ``mc1`` and
    ``mc2`` are TruthfulQA's (see ``hpr.data.records.Record``)."""

    key: str  # stable id suffix, from file order
    prompt: str
    choices: list[str]
    correct: list[int]
    meta: dict[str, Any] = field(default_factory=dict)
    best: int | None = None
    mc1: list[int] | None = None
    mc2: list[int] | None = None


@dataclass
class Parsed:
    items: list[Item]
    skipped: list[str] = field(default_factory=list)  # "file: key (reason)"


# ---------------------------------------------------------------- locating files safely
def confined(base: Path, rel: str | Path) -> Path:
    """``base/rel`` resolved, refusing any path (``..``, symlink) that leaves ``base``."""
    root = base.resolve()
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise DataError(
            f"{base / rel} resolves to {path}, outside the data directory {root}; "
            "keep data files (and symlink targets) inside the data directory"
        )
    return path


def data_root(data_dir: str | os.PathLike[str]) -> Path:
    """A data directory that exists and is not empty."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"data directory {path} does not exist; pass an existing --data-dir / HPR_DATA_DIR")
    if path.is_dir() and not any(path.iterdir()):
        raise DataError(f"data directory {path} is empty; put the dataset files there (see README)")
    return path


def bigbench_dir(data_dir: Path) -> Path:
    """The BIG-bench task folder inside ``data_dir`` (``<dir>/bigbench`` or the folder itself)."""
    root = data_root(data_dir)
    for cand in ("bigbench", "."):
        p = confined(root, cand)
        if any((p / t).is_dir() for t in ("truthful_qa", "simple_ethical_questions", "bbq_lite_json")):
            return p
    raise DataError(
        f"{root} holds no BIG-bench tasks (expected bigbench/truthful_qa, bigbench/bbq_lite_json, ... "
        "or those folders directly); point --data-dir / HPR_DATA_DIR at such a folder, or omit it "
        "to use the BIG-bench task files hpr carries"
    )


def toxigen_dir(data_dir: Path | None) -> Path:
    """The ToxiGen ``prompts`` folder: ``<dir>/toxigen/prompts``, ``<dir>/prompts`` or ``<dir>``."""
    how = (
        "ToxiGen needs its prompts folder (files hate_<group>_1k.txt / neutral_<group>_1k.txt from "
        "the ToxiGen repository): set HPR_DATA_DIR=/path/with/toxigen/prompts or pass --data-dir, "
        "or use source 'hub' where the Hugging Face hub is reachable"
    )
    if data_dir is None:
        raise DataError(f"no ToxiGen data: no data directory given. {how}")
    root = data_root(data_dir)
    for cand in ("toxigen/prompts", "prompts", "."):
        p = confined(root, cand)
        if p.is_dir() and any(p.glob("*_1k.txt")):
            return p
    raise DataError(f"no ToxiGen prompts under {root}. {how}")


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing; check the data directory or rerun `hpr fetch`") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}); the file is truncated or corrupt: replace it with the "
            "original (for BIG-bench, delete it and rerun `hpr fetch`)"
        ) from exc


def _examples(obj: Any, path: Path, need: str) -> list[dict[str, Any]]:
    ex = obj.get("examples") if isinstance(obj, dict) else None
    if not isinstance(ex, list) or not all(isinstance(e, dict) and need in e for e in ex):
        raise DataError(
            f"{path} is not in the expected format: need a JSON object with an 'examples' list whose "
            f"entries have {need!r}; use the original file"
        )
    return ex


# ---------------------------------------------------------------- parsers, one per format
def _dedupe(xs: Iterable[str]) -> list[str]:
    out: list[str] = []
    for x in xs:
        x = str(x).strip()
        if x and x not in out:
            out.append(x)
    return out


def truthful_item(
    key: str, question: str, true: Iterable[str], false: Iterable[str], best: str | None, meta: dict[str, Any]
) -> Item | str:
    """MC2 choices (true then false answers), MC1 = best answer + all false answers (used when no MC1
    set is given: questions.json alone, TruthfulQA.csv); or a skip reason."""
    t = _dedupe(true)
    if best and best.strip() and best.strip() not in t:
        t.insert(0, best.strip())
    f = [x for x in _dedupe(false) if x not in t]
    if not t or not f:
        return "no correct answer" if not t else "no incorrect answer"
    b = t.index(best.strip()) if best and best.strip() else 0
    falses = list(range(len(t), len(t) + len(f)))
    return Item(key, question.strip(), t + f, list(range(len(t))), meta, b, [b, *falses], list(range(len(t) + len(f))))


def mc_sets_item(
    key: str,
    question: str,
    true: Iterable[str],
    false: Iterable[str],
    best: str | None,
    mc1_false: Iterable[str],
    meta: dict[str, Any],
) -> Item | str:
    """A TruthfulQA question from its two canonical choice sets; or a skip reason.

    MC2 = ``true`` + ``false`` exactly (``mc2_targets``); MC1 = ``best`` + ``mc1_false``
    (``mc1_targets``). ``choices`` = MC2's answers, then MC1 answers MC2 lacks (so ``mc2`` is
    ``0..len(mc2)-1``); ``correct`` = MC2's true answers, plus ``best`` if MC2 lacks it.
    """
    t = _dedupe(true)
    f = [x for x in _dedupe(false) if x not in t]
    if not t or not f:
        return "no correct answer" if not t else "no incorrect answer"
    choices = t + f
    mc2 = list(range(len(choices)))
    b = best.strip() if best and best.strip() else t[0]
    wrong = [x for x in _dedupe(mc1_false) if x != b]
    for c in (b, *wrong):
        if c not in choices:
            choices.append(c)
    correct = list(range(len(t))) + ([choices.index(b)] if b not in t else [])
    return Item(
        key,
        question.strip(),
        choices,
        correct,
        meta,
        choices.index(b),
        [choices.index(b), *(choices.index(c) for c in wrong)],
        mc2,
    )


def mc1_sets(path: Path) -> dict[str, tuple[str, list[str]]]:
    """BIG-bench ``truthful_qa/task_mc.json``: question -> (best answer, MC1's incorrect answers);
    ``target_scores`` label 1 marks the best answer (these are TruthfulQA's ``mc1_targets``)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for i, e in enumerate(_examples(read_json(path), path, "target_scores")):
        ts = e.get("target_scores")
        if not isinstance(e.get("input"), str) or not isinstance(ts, dict):
            raise _bad_example(path, i, "'input' must be a string and 'target_scores' an object")
        pairs = _targets(ts, path, i)
        best = [c for c, lab in pairs if lab == 1]
        if len(best) != 1:
            raise _bad_example(path, i, f"MC1 needs exactly one answer labelled 1, found {len(best)}")
        out[e["input"].strip()] = (best[0], [c for c, lab in pairs if lab != 1])
    return out


def parse_truthfulqa_questions(path: Path, task_mc: Path | None = None) -> Parsed:
    """BIG-bench ``truthful_qa/questions.json`` (Question, Category, True/False answers, Best answer).

    With ``task_mc`` (BIG-bench's ``task_mc.json``, joined by question text) MC1 is its canonical
    set (``mc_sets_item``); without it, MC1 = best answer + every false answer (``truthful_item``).
    """
    mc1 = mc1_sets(task_mc) if task_mc is not None else {}
    out = Parsed([])
    for i, e in enumerate(_examples(read_json(path), path, "Question")):
        if (
            not isinstance(e["Question"], str)
            or not _str_list(e.get("True answers", []))
            or not _str_list(e.get("False answers", []))
            or not isinstance(e.get("Best answer", ""), str | None)
        ):
            raise _bad_example(
                path,
                i,
                "'Question' and 'Best answer' must be strings, 'True answers' and 'False answers' lists of strings",
            )
        meta = {"category": e.get("Category", "")}
        got = mc1.get(e["Question"].strip())
        if got is not None:
            it = mc_sets_item(
                str(i), e["Question"], e.get("True answers", []), e.get("False answers", []), got[0], got[1], meta
            )
        else:
            it = truthful_item(
                str(i), e["Question"], e.get("True answers", []), e.get("False answers", []), e.get("Best answer"), meta
            )
        _add(out, it, path, i)
    return out


def parse_truthfulqa_csv(path: Path) -> Parsed:
    """TruthfulQA's ``TruthfulQA.csv`` (Type, Category, Question, Best Answer, Correct/Incorrect Answers)."""
    need = {"Question", "Best Answer", "Correct Answers", "Incorrect Answers"}
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV ({exc}); use TruthfulQA's original TruthfulQA.csv") from exc
    if not rows or not need <= set(rows[0]):
        raise DataError(
            f"{path} lacks TruthfulQA columns {sorted(need - set(rows[0] if rows else []))}; use the "
            "original TruthfulQA.csv (columns Type, Category, Question, Best Answer, Correct Answers, "
            "Incorrect Answers)"
        )
    out = Parsed([])
    for i, r in enumerate(rows):
        if any(r.get(c) is None for c in need):
            raise DataError(f"{path} row {i + 2} is truncated (missing columns); restore the original file")
        meta = {"category": r.get("Category") or "", "type": r.get("Type") or ""}
        it = truthful_item(
            str(i),
            r["Question"],
            r["Correct Answers"].split(";"),
            r["Incorrect Answers"].split(";"),
            r["Best Answer"],
            meta,
        )
        _add(out, it, path, i)
    return out


def _targets(t: Any, path: Path, i: int) -> list[tuple[str, int]]:
    try:
        if isinstance(t, dict) and "choices" in t and "labels" in t:  # Hugging Face layout
            return [(str(c), _label(lab)) for c, lab in zip(t["choices"], t["labels"], strict=True)]
        if isinstance(t, dict):  # TruthfulQA mc_task.json layout: {answer: 0/1}
            return [(str(c), _label(lab)) for c, lab in t.items()]
    except (TypeError, ValueError, OverflowError) as exc:
        raise _bad_example(path, i, f"targets must map each answer to a label 0 or 1 ({exc})") from exc
    raise DataError(f"{path} question {i}: targets must be an object of answer -> 0/1; use the original file")


def mc_targets_item(
    key: str, question: str, mc1: Any, mc2: Any, path: Path, i: int, meta: dict[str, Any]
) -> Item | str:
    """A TruthfulQA question from its ``mc1_targets``/``mc2_targets`` (``mc_sets_item``)."""
    if not isinstance(question, str):
        raise _bad_example(path, i, "the question must be a string")
    t2 = _targets(mc2, path, i)
    t1 = _targets(mc1, path, i)
    best = next((c for c, lab in t1 if lab == 1), None)
    return mc_sets_item(
        key,
        question,
        [c for c, lab in t2 if lab == 1],
        [c for c, lab in t2 if lab != 1],
        best,
        [c for c, lab in t1 if lab != 1],
        meta,
    )


def parse_mc_task(path: Path) -> Parsed:
    """TruthfulQA's ``mc_task.json``: a list of {question, mc1_targets, mc2_targets}."""
    data = read_json(path)
    if not isinstance(data, list) or not all(
        isinstance(e, dict) and {"question", "mc1_targets", "mc2_targets"} <= set(e) for e in data
    ):
        raise DataError(
            f"{path} is not TruthfulQA's mc_task.json (a list of {{question, mc1_targets, "
            "mc2_targets}}); use the original file"
        )
    out = Parsed([])
    for i, e in enumerate(data):
        _add(out, mc_targets_item(str(i), e["question"], e["mc1_targets"], e["mc2_targets"], path, i, {}), path, i)
    return out


def parse_bigbench_task(path: Path, meta: dict[str, Any] | None = None) -> Parsed:
    """A BIG-bench multiple-choice ``task.json``: choices from ``target_scores`` (score 1 = correct),
    in file order; the prompt is ``input`` verbatim (BIG-bench's formatting keeps its whitespace)."""
    out = Parsed([])
    for i, e in enumerate(_examples(read_json(path), path, "target_scores")):
        scores = e["target_scores"]
        if not isinstance(scores, dict) or "input" not in e:
            raise DataError(f"{path} example {i} lacks 'input' or a target_scores object; use the original file")
        choices = [str(c) for c in scores]
        if not all(isinstance(s, int | float) for s in scores.values()):
            raise _bad_example(path, i, "target_scores values must be numbers (1 = correct, 0 = wrong)")
        correct = [j for j, s in enumerate(scores.values()) if float(s) == 1.0]
        m = dict(meta or {})
        com = e.get("comment")
        if isinstance(com, dict):
            for src, dst in (
                ("category", "category"),
                ("context_condition", "ambiguity"),
                ("question_polarity", "polarity"),
            ):
                if src in com:
                    m[dst] = com[src]
        if not correct or len(correct) == len(choices):
            _add(out, "no correct answer" if not correct else "no incorrect answer", path, i)
            continue
        best = correct[0] if len(correct) == 1 else None
        mc1 = [best, *(j for j in range(len(choices)) if j != best)] if best is not None else None
        out.items.append(Item(str(i), str(e["input"]), choices, correct, m, best, mc1))
    return out


def _str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def _label(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int | float | str):
        raise TypeError(f"label {x!r} is not 0 or 1")
    return int(x)


def _bad_example(path: Path, i: int, what: str) -> DataError:
    return DataError(f"{path} example {i} is malformed: {what}; use the original, unmodified file")


def _add(out: Parsed, it: Item | str, path: Path, i: int) -> None:
    if isinstance(it, Item):
        out.items.append(it)
    else:
        out.skipped.append(f"{path.name}: example {i} ({it})")
