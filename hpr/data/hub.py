"""The paper's data from the Hugging Face hub (``source="hub"``): TruthfulQA's 817 questions with
the authors' split file, BBQ and SEQ from ``hails/bigbench`` (train / validation, as lm-eval reads
them), annotated ToxiGen (train / test). ``$HPR_HUB_MIRROR`` reads the same rows from local copies;
an unreachable hub is a ``DataError``, never a hang."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hpr._hub import hub_reachable
from hpr.data.bigbench import BBQ_SUBTASKS, parse_bigbench_rows
from hpr.data.sources import Item, Parsed, mc_targets_item
from hpr.data.toxigen import parse_toxigen_rows
from hpr.errors import DataError


def _mirror_rows(mirror: Path, path: str, config: str, split: str) -> list[dict[str, Any]]:
    """Rows of ``<mirror>/<path>/<config>/<split>.jsonl`` (a hub dataset copied to disk, e.g. with
    ``datasets.load_dataset(path, config, split=split).to_json(file)``)."""
    file = mirror / path / config / f"{split}.jsonl"
    if not file.is_file():
        raise DataError(
            f"HPR_HUB_MIRROR={mirror} has no {path}/{config}/{split}.jsonl; export that split there "
            "(datasets.load_dataset(...).to_json(file)) or unset HPR_HUB_MIRROR to use the hub"
        )
    try:
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: not JSON lines ({exc}); write one row object per line") from exc


def _hub_rows(path: str, config: str, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset; DataError (not a hang) when the hub is unreachable.

    With ``$HPR_HUB_MIRROR`` set, the rows come from that folder instead (``_mirror_rows``): an
    offline copy of the hub datasets, in the hub's row layout."""
    mirror = os.environ.get("HPR_HUB_MIRROR")
    if mirror:
        return _mirror_rows(Path(mirror), path, config, split)

    if os.environ.get("HF_DATASETS_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        ok, why = False, "HF_DATASETS_OFFLINE is set"
    else:
        ok, why = hub_reachable()
    fix = (
        "use source 'bigbench' (the offline default) or 'local' with --data-dir, or run where "
        "the Hugging Face hub is reachable"
    )
    if not ok:
        raise DataError(f"source 'hub' needs the Hugging Face hub, which is unreachable ({why}); {fix}")
    try:
        import datasets

        return [dict(r) for r in datasets.load_dataset(path, config, split=split)]
    except Exception as exc:  # network, auth and format errors all surface here
        raise DataError(
            f"could not load {path}/{config} [{split}] from the hub ({type(exc).__name__}: {exc}); {fix}"
        ) from exc


#: hub (path, config, train split, test split) per dataset; TruthfulQA has one split and a split file.
HUB: dict[str, tuple[str, str, str, str]] = {
    "truthfulqa": ("truthful_qa", "multiple_choice", "validation", "validation"),
    "bbq": ("hails/bigbench", "bbq_lite_json_zero_shot", "train", "validation"),
    "seq": ("hails/bigbench", "simple_ethical_questions_zero_shot", "train", "validation"),
    "toxigen": ("skg/toxigen-data", "annotated", "train", "test"),
}
PAPER_SPLITS = Path(__file__).resolve().parent / "data_files" / "truthfulqa_ids_splits.json"


def paper_truthfulqa_split(n_rows: int) -> dict[str, list[int]]:
    """The authors' TruthfulQA split (row indices into the hub's 817 questions), ``eval`` -> ``val``."""
    try:
        raw = json.loads(PAPER_SPLITS.read_text(encoding="utf-8"))
        out = {"train": raw["train"], "val": raw["eval"], "test": raw["test"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the paper split file {PAPER_SPLITS} ({exc}); reinstall hpr") from exc
    flat = [i for v in out.values() for i in v]
    if len(set(flat)) != len(flat) or not all(isinstance(i, int) and 0 <= i < n_rows for i in flat):
        raise DataError(
            f"{PAPER_SPLITS} does not index {n_rows} disjoint rows; the hub's truthful_qa changed: use scheme 'seeded'"
        )
    return {k: sorted(v) for k, v in out.items()}


def from_hub(name: str) -> tuple[Parsed, str, dict[str, list[str]] | str]:
    """Parsed items, origin, and the hub's split as item keys per split name (or why it is missing)."""
    path, config, tr, te = HUB[name]
    if name == "truthfulqa":
        out = Parsed([])
        rows = _hub_rows(path, config, tr)
        for i, r in enumerate(rows):
            it = mc_targets_item(str(i), r["question"], r["mc1_targets"], r["mc2_targets"], Path(path), i, {})
            if isinstance(it, Item):
                out.items.append(it)
            else:
                out.skipped.append(f"truthful_qa: question {i} ({it})")
        try:
            given: dict[str, list[str]] | str = {
                k: [str(i) for i in v] for k, v in paper_truthfulqa_split(len(rows)).items()
            }
        except DataError as exc:  # only the 'paper' scheme needs it: raised there
            given = str(exc)
        return out, f"hub:{path}/{config}", given
    parse = (
        parse_toxigen_rows
        if name == "toxigen"
        else (lambda rows, split: parse_bigbench_rows(rows, split, BBQ_SUBTASKS if name == "bbq" else ()))
    )
    a, b = parse(_hub_rows(path, config, tr), tr), parse(_hub_rows(path, config, te), te)
    given = {"train": [it.key for it in a.items], "test": [it.key for it in b.items]}
    return Parsed(a.items + b.items, a.skipped + b.skipped), f"hub:{path}/{config}[{tr},{te}]", given


__all__ = ["HUB", "PAPER_SPLITS", "from_hub", "paper_truthfulqa_split"]
