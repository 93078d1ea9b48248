"""Datasets as ``Record`` lists, split train/val/test by a named scheme, and seeded caps.

``load_split(dataset, split, *, source=None, data_dir=None, seed=0, scheme=None)``. Datasets
(``DATASETS``): ``truthfulqa`` (MC1 + MC2), ``bbq`` (BBQ-lite), ``seq`` (simple_ethical_questions),
``toxigen``. Sources (``SOURCES``; parameter ``source`` or ``$HPR_DATA_SOURCE``; data dir
``data_dir`` or ``$HPR_DATA_DIR``):

- ``bigbench`` (default): BIG-bench task files from ``<data_dir>/bigbench`` (or the folder
  itself), else the copy hpr carries (the ``bigbench==1.0.0`` sdist's files, sha256-checked).
  TruthfulQA here is BIG-bench's 299-question subset; MC1 is ``task_mc.json``'s set (TruthfulQA's
  ``mc1_targets``) when that file is present, MC2 ``questions.json``'s true + false answers.
- ``hub`` (the paper's data): ``truthful_qa``/``multiple_choice``/``validation`` (817 questions),
  ``hails/bigbench`` ``bbq_lite_json_zero_shot`` and ``simple_ethical_questions_zero_shot``
  (``train`` and ``validation``; their ``inputs`` are kept verbatim as the scoring context) and
  ``skg/toxigen-data``/``annotated`` (``train`` and the 940-row ``test``, labelled as lm-eval does).
  ``$HPR_HUB_MIRROR`` names a folder holding ``<path>/<config>/<split>.jsonl`` copies of these
  (rows in the hub's layout) to read instead of the hub.
- ``local``: original-format files in ``data_dir`` (or ``data_dir`` is the file itself):
  TruthfulQA's ``TruthfulQA.csv`` or ``mc_task.json``, BIG-bench ``task.json`` files, the ToxiGen
  ``prompts/`` folder.

ToxiGen always needs a prompts folder (``<data_dir>/toxigen/prompts``) outside ``hub``.
Questions without any correct or any incorrect answer are skipped: a warning gives the count,
and ``load_dataset(...).skipped`` lists them.

Split schemes (``SCHEMES``; parameter ``scheme``, default ``paper`` for ``hub``, else ``seeded``):

- ``seeded``: TruthfulQA 40/10/50 train/val/test; the others test = 20%, the rest 80/20
  train/val (counts rounded half up, test gets the remainder for TruthfulQA, train for the
  others). The permutation is ``random.Random(seed).shuffle`` of file order.
- ``paper`` (hub only): TruthfulQA by the authors' split file (``data_files/
  truthfulqa_ids_splits.json``: row indices, its ``eval`` is our ``val``); the others test on the
  hub's test split (BIG-bench ``validation``, ToxiGen ``test``) and split the hub's ``train``
  80/20 train/val with ``random.Random(seed)``.

Every split keeps file order. ``cap_records`` takes a seeded sample stratified by ``stratum``
(BBQ subtask, ToxiGen label, TruthfulQA category), ``strata`` counts the strata.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpr.data.bigbench import bigbench_tasks
from hpr.data.hub import from_hub
from hpr.data.prompts import TOXIGEN_PROMPT
from hpr.data.records import DATASETS, Record
from hpr.data.sources import (
    Item,
    Parsed,
    bigbench_dir,
    confined,
    data_root,
    parse_bigbench_task,
    parse_mc_task,
    parse_truthfulqa_csv,
    parse_truthfulqa_questions,
    read_json,
    toxigen_dir,
)
from hpr.data.toxigen import parse_toxigen
from hpr.errors import DataError, ParameterError

SOURCES: tuple[str, ...] = ("bigbench", "hub", "local")
SPLITS: tuple[str, ...] = ("train", "val", "test")
SCHEMES: tuple[str, ...] = ("seeded", "paper")
#: lm-eval 0.4.13's ToxiGen ``doc_to_text``; ``Record.prompt`` of ToxiGen is the wrapped statement.
_log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """All records of one dataset from one source, before splitting."""

    name: str
    source: str
    origin: str  # the folder, file or hub id read
    records: list[Record]
    skipped: list[str] = field(default_factory=list)
    #: the source's own split (``hub``): split name -> indices into ``records``, for scheme ``paper``;
    #: a string says why it is unavailable.
    given: dict[str, list[int]] | str | None = None


def resolve_source(source: str | None) -> str:
    s = source or os.environ.get("HPR_DATA_SOURCE") or "bigbench"
    if s not in SOURCES:
        raise DataError(
            f"unknown data source {s!r}; choose one of {', '.join(SOURCES)} "
            "(parameter source / --source or HPR_DATA_SOURCE)"
        )
    return s


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    d = data_dir if data_dir is not None else os.environ.get("HPR_DATA_DIR") or None
    return data_root(d) if d is not None else None


def _check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# ---------------------------------------------------------------- per-source readers
def _bbq(bb: Path) -> Parsed:
    root = confined(bb, "bbq_lite_json")
    subs = sorted(p for p in root.glob("*_*ambig") if (p / "task.json").is_file()) if root.is_dir() else []
    if not subs:
        raise DataError(
            f"no BBQ-lite tasks under {root} (expected <category>_ambig/task.json and "
            "<category>_disambig/task.json); use the BIG-bench layout or rerun `hpr fetch`"
        )
    out = Parsed([])
    for sub in subs:
        cat, amb = sub.name.rsplit("_", 1)
        got = parse_bigbench_task(
            confined(bb, sub / "task.json"), {"category": cat, "ambiguity": amb, "subtask": sub.name}
        )
        for it in got.items:
            it.key = f"{sub.name}-{it.key}"
        out.items += got.items
        out.skipped += got.skipped
    return out


def _from_bigbench(name: str, bb: Path) -> Parsed:
    if name == "truthfulqa":
        mc = confined(bb, "truthful_qa/task_mc.json")
        return parse_truthfulqa_questions(confined(bb, "truthful_qa/questions.json"), mc if mc.is_file() else None)
    if name == "seq":
        return parse_bigbench_task(confined(bb, "simple_ethical_questions/task.json"))
    return _bbq(bb)


def _local_file(name: str, path: Path) -> Parsed:
    """One original-format file, recognised by suffix and content."""
    if path.suffix.lower() == ".csv":
        if name != "truthfulqa":
            raise DataError(f"{path}: a CSV file is only read for truthfulqa (TruthfulQA.csv)")
        return parse_truthfulqa_csv(path)
    obj = read_json(path)
    if isinstance(obj, list):
        return parse_mc_task(path)
    ex = obj.get("examples") if isinstance(obj, dict) else None
    if isinstance(ex, list) and ex and isinstance(ex[0], dict) and "Question" in ex[0]:
        mc = path.parent / "task_mc.json"
        return parse_truthfulqa_questions(path, mc if mc.is_file() else None)
    return parse_bigbench_task(path)


_LOCAL_CANDIDATES = {
    "truthfulqa": (
        "TruthfulQA.csv",
        "mc_task.json",
        "data/TruthfulQA.csv",
        "data/mc_task.json",
        "truthful_qa/questions.json",
        "bigbench/truthful_qa/questions.json",
        "questions.json",
    ),
    "seq": ("simple_ethical_questions/task.json", "bigbench/simple_ethical_questions/task.json", "task.json"),
}


def _from_local(name: str, root: Path | None) -> tuple[Parsed, str]:
    if root is None:
        raise DataError("source 'local' needs a data directory or file: pass data_dir / --data-dir or set HPR_DATA_DIR")
    if root.is_file():
        return _local_file(name, root), str(root)
    if name == "bbq":
        for cand in ("bbq_lite_json", "bigbench/bbq_lite_json"):
            if confined(root, cand).is_dir():
                return _bbq(confined(root, cand).parent), str(confined(root, cand))
        if (root / "task.json").is_file():
            return _local_file(name, confined(root, "task.json")), str(root / "task.json")
    for cand in _LOCAL_CANDIDATES.get(name, ()):
        p = confined(root, cand)
        if p.is_file():
            return _local_file(name, p), str(p)
    raise DataError(
        f"no {name} file found in {root}; expected one of "
        f"{', '.join(_LOCAL_CANDIDATES.get(name, ('bbq_lite_json/<cat>_<ambig>/task.json',)))}"
    )


# ---------------------------------------------------------------- public API
def load_dataset(name: str, *, source: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Every record of dataset ``name`` (unsplit, file order) with where it came from."""
    _check_dataset(name)
    src = resolve_source(source)
    root = resolve_data_dir(data_dir)
    given_keys: dict[str, list[str]] | str | None = None
    if name == "toxigen" and src != "hub":
        prompts = toxigen_dir(root if root is None or root.is_dir() else root.parent)
        parsed, origin = parse_toxigen(prompts), str(prompts)
    elif src == "hub":
        parsed, origin, given_keys = from_hub(name)
    elif src == "local":
        parsed, origin = _from_local(name, root)
    else:
        bb = bigbench_dir(root) if root is not None else bigbench_tasks()
        parsed, origin = _from_bigbench(name, bb), str(bb)
    if not parsed.items:
        raise DataError(
            f"{origin} holds no usable {name} examples ({len(parsed.skipped)} skipped); every "
            "example needs at least one correct and one incorrect answer: use the original files"
        )
    if parsed.skipped:
        msg = (
            f"{name}: skipped {len(parsed.skipped)} example(s) with no correct or no incorrect "
            f"answer, e.g. {parsed.skipped[0]}"
        )
        _log.warning(msg)
        warnings.warn(msg, stacklevel=3)
    recs = [_record(name, it) for it in parsed.items]
    pos = {it.key: j for j, it in enumerate(parsed.items)}
    given = (
        given_keys
        if not isinstance(given_keys, dict)
        else {k: [pos[x] for x in v if x in pos] for k, v in given_keys.items()}
    )
    return Dataset(name, src, origin, recs, parsed.skipped, given)


def _record(name: str, it: Item) -> Record:
    prompt = TOXIGEN_PROMPT.format(text=it.prompt) if name == "toxigen" else it.prompt
    meta = {**it.meta, "text": it.prompt} if name == "toxigen" else it.meta
    mc = name == "truthfulqa"  # best/mc1/mc2 are TruthfulQA's notions only
    return Record(
        f"{name}-{it.key}",
        prompt,
        tuple(it.choices),
        tuple(it.correct),
        meta,
        it.best if mc else None,
        tuple(it.mc1) if mc and it.mc1 is not None else None,
        tuple(it.mc2) if mc and it.mc2 is not None else None,
    )


def split_sizes(name: str, n: int) -> tuple[int, int, int]:
    """(train, val, test) counts for ``n`` examples of dataset ``name``."""

    def half_up(x: float) -> int:
        return int(x + 0.5)

    if name == "truthfulqa":
        tr, va = half_up(0.4 * n), half_up(0.1 * n)
        return tr, va, n - tr - va
    te = half_up(0.2 * n)
    va = half_up(0.2 * (n - te))
    return n - te - va, va, te


def split_records(name: str, records: list[Record], seed: int = 0) -> dict[str, list[Record]]:
    """Seeded disjoint train/val/test split of ``records`` (each split in input order)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    tr, va, _ = split_sizes(name, len(records))
    parts = {"train": order[:tr], "val": order[tr : tr + va], "test": order[tr + va :]}
    return {k: [records[i] for i in sorted(v)] for k, v in parts.items()}


def resolve_scheme(scheme: str | None, source: str) -> str:
    """``scheme``, or the default of ``source`` (``paper`` for ``hub``, else ``seeded``)."""
    s = scheme or ("paper" if source == "hub" else "seeded")
    if s not in SCHEMES:
        raise ParameterError(f"unknown split scheme {s!r}; choose one of {', '.join(SCHEMES)}")
    return s


def split_dataset(ds: Dataset, seed: int = 0, scheme: str | None = None) -> dict[str, list[Record]]:
    """``{"train", "val", "test"}`` of ``ds`` by split scheme (see the module docstring)."""
    s = resolve_scheme(scheme, ds.source)
    if s == "seeded":
        return split_records(ds.name, ds.records, seed)
    if isinstance(ds.given, str):
        raise DataError(ds.given)
    if ds.given is None:
        raise ParameterError(
            f"split scheme 'paper' needs the paper's data: use source 'hub' (this is {ds.source!r}), or scheme 'seeded'"
        )
    parts = dict(ds.given)
    if "val" not in parts:  # train split again 80/20, seeded
        order = list(parts["train"])
        random.Random(seed).shuffle(order)
        va = int(0.2 * len(order) + 0.5)
        parts = {"train": order[va:], "val": order[:va], "test": parts["test"]}
    return {k: [ds.records[i] for i in sorted(parts[k])] for k in SPLITS}


def load_splits(
    dataset: str,
    *,
    source: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    scheme: str | None = None,
) -> dict[str, list[Record]]:
    """``{"train", "val", "test"}`` record lists of ``dataset`` (see module docstring)."""
    resolve_scheme(scheme, resolve_source(source))  # fail fast, before reading any data
    return split_dataset(load_dataset(dataset, source=source, data_dir=data_dir), seed, scheme)


def load_split(
    dataset: str,
    split: str,
    *,
    source: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    scheme: str | None = None,
) -> list[Record]:
    """One split (``train``, ``val`` or ``test``) of ``dataset`` as Records."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return load_splits(dataset, source=source, data_dir=data_dir, seed=seed, scheme=scheme)[split]


def dataset_info(
    dataset: str,
    *,
    source: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    scheme: str | None = None,
) -> dict[str, Any]:
    """Name, source, scheme, origin, split sizes and skipped count; ``unavailable`` = reason on DataError."""
    sch = resolve_scheme(scheme, resolve_source(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_dataset(dataset, source=source, data_dir=data_dir)
    except DataError as exc:
        return {"dataset": dataset, "source": resolve_source(source), "scheme": sch, "unavailable": str(exc)}
    sizes = {k: len(v) for k, v in split_dataset(ds, seed, sch).items()}
    return {
        "dataset": dataset,
        "source": ds.source,
        "scheme": sch,
        "origin": ds.origin,
        **sizes,
        "total": len(ds.records),
        "skipped": len(ds.skipped),
    }


# ---------------------------------------------------------------- caps
def stratum(dataset: str, record: Record) -> str:
    """The cap stratum of ``record``: BBQ ``meta["subtask"]`` (category x ambiguity), ToxiGen its
    label (``hateful``/``not hateful``), TruthfulQA ``meta["category"]`` (``""`` when absent),
    SEQ ``""`` (one stratum)."""
    if dataset == "bbq":
        return str(record.meta.get("subtask") or "")
    if dataset == "toxigen":
        return "hateful" if record.correct and record.choices[record.correct[0]] == "Yes" else "not hateful"
    if dataset == "truthfulqa":
        return str(record.meta.get("category") or "")
    return ""


def strata(dataset: str, records: list[Record]) -> dict[str, int]:
    """Records per stratum (``stratum``), strata sorted by name."""
    return dict(sorted(Counter(stratum(dataset, r) for r in records).items()))


def allocate(counts: dict[str, int], cap: int) -> dict[str, int]:
    """Largest-remainder proportional allocation of ``cap`` over strata of sizes ``counts``
    (exact integer arithmetic; ties of the remainder go to the larger stratum, then by name)."""
    total = sum(counts.values())
    share = {k: cap * n // total for k, n in counts.items()}
    left = cap - sum(share.values())
    for k in sorted(counts, key=lambda k: (-(cap * counts[k] % total), -counts[k], k))[:left]:
        share[k] += 1
    return share


def cap_records(dataset: str, records: list[Record], cap: int | None, seed: int) -> list[Record]:
    """A seeded random sample of ``cap`` records, stratified by ``stratum`` (``allocate``), in
    input order; all records when ``cap`` is None or at least ``len(records)``."""
    if cap is None or cap >= len(records):
        return list(records)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ParameterError(f"cap must be a positive integer or None, got {cap!r}")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(stratum(dataset, r), []).append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    for k, n in sorted(allocate({k: len(v) for k, v in groups.items()}, cap).items()):
        keep += rng.sample(groups[k], n)
    return [records[i] for i in sorted(keep)]
