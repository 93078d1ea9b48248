"""BIG-bench task files: fetching them (the ``bigbench==1.0.0`` sdist from PyPI, sha256-checked,
only the needed members extracted, no path traversal, no links) and BIG-bench's default
multiple-choice prompt formatting (``format_mc_input``), as lm-eval scores it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpr._files import cache_dir, write_bytes, write_json
from hpr.data.sources import Item, Parsed, confined
from hpr.data.sources import _add as add_item
from hpr.errors import DataError

BIGBENCH_VERSION = "1.0.0"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
_BB_PREFIX = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks/"
_BB_WANTED = re.compile(
    r"^(truthful_qa/(questions|task_mc)\.json|simple_ethical_questions/task\.json"
    r"|bbq_lite_json/[a-z_]+_(ambig|disambig)/task\.json)$"
)
_DONE = ".hpr_complete.json"
#: BIG-bench's formatter, kept beside the task files (``<cache>/api/json_task.py``) for checks.
_BB_FORMATTER = f"bigbench-{BIGBENCH_VERSION}/bigbench/api/json_task.py"

#: ``JsonTask`` defaults of ``bigbench/api/json_task.py`` (bigbench 1.0.0), used by BBQ-lite and SEQ.
INPUT_PREFIX = "\nQ: "
OUTPUT_PREFIX = "\nA: "
CHOICE_PREFIX = "\n  choice: "
#: ``JsonTask(random_seed=42)``: the seed of the choice permutation, the same for every example.
CHOICE_SEED = 42


# ---------------------------------------------------------------- BIG-bench's default formatting
def choice_permutation(n: int, seed: int = CHOICE_SEED) -> list[int]:
    """The order BIG-bench lists ``n`` sorted choices in: ``np.random.RandomState(seed).permutation``.

    ``default_format_fn`` makes a fresh ``RandomState(random_seed)`` for every example, so the
    permutation depends only on the number of choices (``random_seed`` = 42 for every example).
    """
    return [int(i) for i in np.random.RandomState(seed=seed).permutation(n)]


def format_mc_input(question: str, choices: Sequence[str], task_prefix: str = "") -> str:
    """The ``inputs`` text of the Hugging Face ``bigbench`` dataset for a zero-shot multiple-choice
    example: ``"Q: <question>\\n  choice: <c>...\\nA:"``.

    BIG-bench builds ``task_prefix + "\\nQ: " + input + "\\n  choice: " + "\\n  choice: ".join(perm)
    + "\\nA: "``, where ``perm`` is the sorted choices in ``choice_permutation`` order; the HF dataset
    then strips the whole string. So only the leading newline and the trailing space go: whitespace
    inside, including the input's own trailing whitespace (SEQ has such inputs) and the choices'
    (BBQ-lite has ``"The brother "``), stays. ``question`` must be the file's ``input`` verbatim.
    """
    srt = sorted(str(c) for c in choices)
    perm = [srt[i] for i in choice_permutation(len(srt))]
    text = task_prefix + INPUT_PREFIX + question + CHOICE_PREFIX + CHOICE_PREFIX.join(perm) + OUTPUT_PREFIX
    return text.strip()


def question_of(inputs: str) -> str:
    """The raw ``input`` inside a formatted ``inputs`` (inverse of ``format_mc_input`` without a
    task prefix); ``inputs`` itself when it is not in that form."""
    head = INPUT_PREFIX.strip() + " "
    if inputs.startswith(head) and CHOICE_PREFIX in inputs:
        return inputs[len(head) : inputs.index(CHOICE_PREFIX)]
    return inputs


# ---------------------------------------------------------------- fetching BIG-bench
def bigbench_cache() -> Path:
    """Where the extracted BIG-bench task files live (``cache_dir()/data/bigbench-1.0.0``)."""
    return cache_dir() / "data" / f"bigbench-{BIGBENCH_VERSION}"


def _index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")


def _sdist_url() -> str:
    name = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
    req = urllib.request.Request(f"{_index_url()}/bigbench/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        index = json.load(r)
    for f in index.get("files", []):
        if f.get("filename") == name:
            return str(f["url"])
    raise DataError(f"{name} is not listed by {_index_url()}; set PIP_INDEX_URL to a PyPI mirror that has it")


def fetch_bigbench(progress: Callable[[str], None] | None = None) -> Path:
    """Download the ``bigbench==1.0.0`` sdist from PyPI, verify its sha256, extract only the needed
    task files into ``bigbench_cache()/bigbench`` and return that folder. Reruns are no-ops.

    ``pip download`` cannot fetch this sdist (pip rejects its direct-URL dependency while preparing
    metadata), so the file is read from the PyPI simple index (PEP 691) that pip itself uses.
    """
    say = progress or (lambda s: None)
    dest = bigbench_cache()
    if (dest / _DONE).is_file():
        return dest / "bigbench"
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".bigbench-", suffix=".tar.gz", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            url = _sdist_url()
            say(f"downloading {url}")
            h = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as out:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="bigbench sdist") as bar:
                    while block := r.read(1 << 20):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
        except OSError as exc:
            raise DataError(
                f"cannot download bigbench=={BIGBENCH_VERSION} from {_index_url()} ({exc}); check the "
                "network or PIP_INDEX_URL, or pass --data-dir / HPR_DATA_DIR with the task files"
            ) from exc
        if h.hexdigest() != BIGBENCH_SHA256:
            raise DataError(
                f"bigbench sdist sha256 {h.hexdigest()} != expected {BIGBENCH_SHA256}; "
                "the download is corrupt or tampered: rerun `hpr fetch`"
            )
        say(f"sha256 verified; extracting task files into {dest}")
        n = extract_bigbench(tmp, dest)
        write_json(dest / _DONE, {"sha256": BIGBENCH_SHA256, "files": n})
    finally:
        tmp.unlink(missing_ok=True)
    return dest / "bigbench"


def extract_bigbench(tarball: Path, dest: Path) -> int:
    """Extract the needed BIG-bench members of ``tarball`` under ``dest/bigbench`` (regular files
    only, names checked against a whitelist, so no path traversal), and BIG-bench's formatter
    ``api/json_task.py`` as ``dest/api/json_task.py``. Returns the number of task files written."""
    n = 0
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for m in tar:
                if m.name == _BB_FORMATTER and m.isfile() and (fh := tar.extractfile(m)) is not None:
                    write_bytes(confined(dest, "api/json_task.py"), fh.read())
                    continue
                if not m.name.startswith(_BB_PREFIX) or not m.isfile():
                    continue
                rel = m.name[len(_BB_PREFIX) :]
                if not _BB_WANTED.match(rel) or ".." in rel.split("/"):
                    continue
                fh = tar.extractfile(m)
                if fh is None:
                    continue
                write_bytes(confined(dest / "bigbench", rel), fh.read())
                n += 1
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise DataError(f"cannot read {tarball} ({exc}); delete it and rerun `hpr fetch`") from exc
    if n == 0:
        raise DataError(f"{tarball} holds none of the BIG-bench task files; is it bigbench-{BIGBENCH_VERSION}?")
    return n


# ---------------------------------------------------------------- hub rows (hails/bigbench)
#: BBQ-lite's subtasks in BIG-bench's order (``task_metadata.json``), as the hub rows list them.
BBQ_SUBTASKS: tuple[str, ...] = tuple(
    f"{c}_{a}"
    for c in (
        "age",
        "disability_status",
        "gender_identity",
        "nationality",
        "physical_appearance",
        "race_ethnicity",
        "religion",
        "ses",
        "sexual_orientation",
    )
    for a in ("ambig", "disambig")
)


def parse_bigbench_rows(rows: Sequence[Mapping[str, Any]], split: str, subtasks: Sequence[str] = ()) -> Parsed:
    """``hails/bigbench`` ``<task>_zero_shot`` rows (``inputs``, ``multiple_choice_targets``,
    ``multiple_choice_scores``, ``idx``). ``meta["inputs"]`` keeps ``inputs`` verbatim (the scoring
    context); the prompt is the raw question inside it (``bigbench.question_of``).

    A task with subtasks lists them one after the other, ``idx`` restarting at 0 for each: with
    ``subtasks`` (BBQ-lite's, in BIG-bench's order) the k-th run of rows gets subtask k and the
    category/ambiguity its name encodes (``<category>_<ambig|disambig>``). Keys ``<split>-<row>``.
    """
    out = Parsed([])
    part = -1
    for i, r in enumerate(rows):
        try:
            inputs, targets = str(r["inputs"]), [str(c) for c in r["multiple_choice_targets"]]
            scores = [float(x) for x in r["multiple_choice_scores"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"hub row {split}/{i} lacks inputs/multiple_choice_targets/multiple_choice_scores "
                f"({exc}); use hails/bigbench, config <task>_zero_shot"
            ) from exc
        if i == 0 or int(r.get("idx", 1) or 0) == 0:
            part += 1
        m: dict[str, Any] = {"inputs": inputs, "hub_split": split}
        if subtasks:
            if part >= len(subtasks):
                raise DataError(
                    f"hub rows {split}: more than {len(subtasks)} subtask runs (idx restarts); "
                    "the hub copy does not match BIG-bench's BBQ-lite"
                )
            cat, amb = subtasks[part].rsplit("_", 1)
            m.update(category=cat, ambiguity=amb, subtask=subtasks[part])
        correct = [j for j, x in enumerate(scores) if x == 1.0]
        if len(targets) != len(scores) or not correct or len(correct) == len(targets):
            add_item(out, "no correct answer" if not correct else "no incorrect answer", Path(split), i)
            continue
        out.items.append(Item(f"{split}-{i}", question_of(inputs), targets, correct, m))
    return out
