"""Results of the study: where each (model, method, dataset) result lives, computing it through
``hpr.evaluation.evaluate`` when missing, and the tables of every result under an output directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hpr import _files
from hpr.evaluation.metrics import flip_rates, loglik_shift
from hpr.study.store import FLIP_METHODS, get_method, get_model, get_records, run_dir, settings, variant


# ------------------------------------------------------------------ evaluation
def results_path(
    model_name: str,
    method: str,
    dataset: str,
    seed: int,
    out_dir: str | Path,
    eval_dataset: str | None = None,
    limit: int | None = None,
    tag: str = "",
    k: int = 5,
    train_cap: int | None = None,
    data_dir: str | Path | None = None,
) -> Path:
    """The results folder ``<run dir>/results/<eval dataset>/<method>[-<tag>][-limit<N>]-<variant>``
    (``results.json`` and ``predictions.jsonl``, ``hpr.evaluation.evaluate``'s format); the variant
    hashes k (for methods that use it), the training cap, the data folder and source, and add_bos."""
    from hpr.methods import parse_method

    ev = eval_dataset or dataset
    spec = parse_method(method)  # one name per intervention: "iti-15" is "iti"
    name = spec.name + (f"-{tag}" if tag else "") + (f"-limit{limit}" if limit else "")
    bos = {"add_bos": settings().add_bos} if settings().add_bos is not None else {}
    name += "-" + variant(data_dir, train_cap, k=k if spec.uses_k else None, **bos)
    return run_dir(out_dir, model_name, dataset, seed) / "results" / ev / name


def get_results(
    model_name: str,
    method: str,
    dataset: str = "truthfulqa",
    data_dir: str | None = None,
    seed: int = 0,
    out_dir: str | Path = "runs/book",
    k: int = 5,
    eval_dataset: str | None = None,
    limit: int | None = None,
    train_cap: int | None = None,
    editor: Any = None,
    tag: str = "",
) -> dict[str, Any]:
    """Test-split results of ``method`` trained on ``dataset``, scored on ``eval_dataset`` (default:
    the training dataset), as a flat row (``hpr.evaluation.read_results``).

    Reuses the results in ``results_path(...)`` when they exist; otherwise scores the test split
    (capped to a stratified seeded sample of ``limit`` records) with ``hpr.evaluation.evaluate``,
    the pipeline ``hpr eval`` runs, whose config records what the editors were trained on, the split,
    cap, seed and study settings. ``editor`` overrides the method object (e.g. HPR with another k;
    give a distinct ``tag``).
    """
    from hpr.evaluation.evaluate import evaluate, load_results, read_results
    from hpr.methods import parse_method

    method = parse_method(method).name
    path = results_path(model_name, method, dataset, seed, out_dir, eval_dataset, limit, tag, k, train_cap, data_dir)
    if load_results(path) is not None:
        return read_results(path)
    from hpr.data.datasets import strata

    model, tok = get_model(model_name)
    target = eval_dataset or dataset
    records = get_records(target, "test", data_dir, seed, limit)
    obj = (
        editor if editor is not None else get_method(model_name, method, dataset, data_dir, seed, out_dir, k, train_cap)
    )
    config = {
        "model": model_name,
        "method": method,
        "tag": tag,
        "train_dataset": dataset,
        "split": "test",
        "cap": limit,
        "cap_seed": seed if limit else None,
        "strata": strata(target, records) if limit else None,
        "train_cap": train_cap,
        "seed": seed,
        "k": k,
        "settings": asdict(settings()),
    }
    evaluate(model, tok, target, records, path, method=obj, config=config, progress=False, add_bos=settings().add_bos)
    return read_results(path)


def get_task_results(
    model_name: str,
    method: str,
    task: str,
    dataset: str = "truthfulqa",
    data_dir: str | None = None,
    seed: int = 0,
    out_dir: str | Path = "runs/book",
    k: int = 5,
    limit: int | None = None,
    train_cap: int | None = None,
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """An lm-eval ``task`` (a registry name such as ``hellaswag``, or a task YAML's path) scored on
    ``model_name`` edited by ``method`` trained on ``dataset``: what an edit costs elsewhere. A flat
    row (``hpr.evaluation.read_results``) with lm-eval's metrics, cached under
    ``<run dir>/results/lmeval-<task>/`` like ``get_results``; needs the ``eval`` extra (and the hub
    for registry tasks)."""
    from hpr._files import slug
    from hpr.evaluation.evaluate import evaluate_task, load_results, read_results
    from hpr.methods import parse_method

    spec = parse_method(method)
    name = f"{spec.name}{f'-limit{limit}' if limit else ''}-fewshot{num_fewshot}-"
    name += variant(data_dir, train_cap, k=k if spec.uses_k else None)
    path = run_dir(out_dir, model_name, dataset, seed) / "results" / f"lmeval-{slug(Path(task).stem)}" / name
    if load_results(path) is not None:
        return read_results(path)
    model, tok = get_model(model_name)
    obj = get_method(model_name, spec.name, dataset, data_dir, seed, out_dir, k, train_cap)
    config = {"model": model_name, "method": spec.name, "tag": "lmeval", "train_dataset": dataset, "seed": seed, "k": k}
    evaluate_task(model, tok, task, path, method=obj, limit=limit, config=config, num_fewshot=num_fewshot)
    return read_results(path)


def predictions(result: Path | str | dict[str, Any]) -> list[dict[str, Any]]:
    """The per-example predictions of a results row (``get_results``' dict) or results folder."""
    from hpr.evaluation.evaluate import load_predictions

    return load_predictions(result["path"] if isinstance(result, dict) else result)


def collect_results(out_dir: str | Path = "runs/book") -> list[dict[str, Any]]:
    """Every results row under ``out_dir`` (sorted by path; ``hpr.evaluation.read_results``)."""
    from hpr.evaluation.evaluate import RESULTS_FILE, read_results

    rows = []
    for path in sorted(Path(out_dir).glob(f"*/*/seed*/results/*/*/{RESULTS_FILE}")):
        try:
            rows.append(read_results(path.parent))
        except (ValueError, OSError):
            continue
    return rows


def _against_base(rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(base row, edited row) pairs of the main (untagged) TruthfulQA results rows: same model and
    seed, editors trained on TruthfulQA."""
    main = [
        r
        for r in rows
        if not r.get("tag")
        and r.get("dataset") == "truthfulqa"
        and r.get("train_dataset", "truthfulqa") == "truthfulqa"
    ]
    return [
        (base, r)
        for base in main
        if base["method"] == "base"
        for r in main
        if r["model"] == base["model"] and r["method"] != "base" and r.get("seed") == base.get("seed")
    ]


def study_flips(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Table 3's flip rates per model and method (``FLIP_METHODS`` against base, TruthfulQA MC1),
    from the predictions next to the main (untagged) results rows."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for base, r in _against_base(rows):
        if r["method"] in FLIP_METHODS:
            f = flip_rates(predictions(base), predictions(r))
            out.setdefault(r["model"], {})[r["method"]] = {**f, "overall_acc": f["accuracy_after"]}
    return out


def study_loglik_shifts(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and method, how the edit moves every TruthfulQA choice's log-likelihood against
    base (``hpr.evaluation.metrics.loglik_shift``), from the main results rows' predictions."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for base, r in _against_base(rows):
        before, after = predictions(base), predictions(r)
        if all("logliks" in x for x in (*before, *after)):  # older runs' rows may lack them: left out
            out.setdefault(r["model"], {})[r["method"]] = loglik_shift(before, after)
    return out


def results_markdown(out_dir: str | Path = "runs/book") -> str:
    """The results chapter's tables (the paper's Tables 1-3 layout, ours beside the paper's)."""
    from hpr.study.tables import results_markdown as tables_markdown

    rows = [r for r in collect_results(out_dir) if not r.get("tag")]
    return tables_markdown(rows, study_flips(rows), study_loglik_shifts(rows))


def write_results_markdown(out_dir: str | Path = "runs/book", dest: str | Path = "book/_generated/results.md") -> Path:
    """Write ``results_markdown`` to ``dest`` (atomically) for the book's results chapter."""
    _files.write_text(dest, results_markdown(out_dir))
    return Path(dest)


__all__ = [
    "get_task_results",
    "collect_results",
    "get_results",
    "predictions",
    "results_markdown",
    "results_path",
    "study_flips",
    "study_loglik_shifts",
    "write_results_markdown",
]
