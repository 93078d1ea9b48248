"""BIG-bench task files: the copy hpr carries (the task files of the ``bigbench==1.0.0`` sdist,
unmodified, sha256-checked when extracted into the cache) and BIG-bench's default multiple-choice
prompt formatting (``format_mc_input``), as lm-eval scores it."""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import shutil
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpr._files import cache_dir, write_bytes, write_json, write_text
from hpr.data.sources import Item, Parsed, confined
from hpr.data.sources import _add as add_item
from hpr.errors import DataError

BIGBENCH_VERSION = "1.0.0"
#: sha256 of ``bigbench-1.0.0.tar.gz``, the sdist the carried task files were taken from.
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
#: The task files hpr needs, as paths under the sdist's ``bigbench/benchmark_tasks``.
_BB_WANTED = re.compile(
    r"^(truthful_qa/(questions|task_mc)\.json|simple_ethical_questions/task\.json"
    r"|bbq_lite_json/[a-z_]+_(ambig|disambig)/task\.json)$"
)
_DONE = ".hpr_complete.json"

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


# ---------------------------------------------------------------- the carried task files
def bigbench_cache() -> Path:
    """Where the extracted BIG-bench task files live (``cache_dir()/data/bigbench-1.0.0``)."""
    return cache_dir() / "data" / f"bigbench-{BIGBENCH_VERSION}"


#: The task files hpr carries: BIG-bench 1.0.0's, unmodified (Apache-2.0, licence beside them),
#: in a deterministic tar.xz (``pack_tasks``), with one ``sha256  path`` line per file.
TASKS_ARCHIVE = Path(__file__).resolve().parent / "data_files" / f"bigbench-{BIGBENCH_VERSION}-tasks.tar.xz"
TASKS_MANIFEST = TASKS_ARCHIVE.with_name(f"bigbench-{BIGBENCH_VERSION}-tasks.sha256")


def task_manifest(path: Path = TASKS_MANIFEST) -> dict[str, str]:
    """Task file (path relative to ``benchmark_tasks``) -> sha256 (hex), from a ``sha256sum`` list."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            out[rel.strip()] = digest
    return out


def bigbench_tasks(progress: Callable[[str], None] | None = None) -> Path:
    """The BIG-bench task folder: the task files hpr carries (``TASKS_ARCHIVE``), extracted once
    into ``bigbench_cache()/bigbench``, each checked against its sha256. Reruns are no-ops.

    PyPI no longer serves the ``bigbench==1.0.0`` sdist these files come from, so the package
    carries them (11.6 MB as JSON, 0.29 MB compressed); the manifest's hashes were taken from the
    sdist (whose sha256 is ``BIGBENCH_SHA256``).
    """
    dest = bigbench_cache()
    if (dest / _DONE).is_file():
        return dest / "bigbench"
    if progress is not None:
        progress(f"extracting the BIG-bench {BIGBENCH_VERSION} task files hpr carries into {dest}")
    manifest = task_manifest()
    extract_tasks(TASKS_ARCHIVE, dest / "bigbench", manifest)
    write_json(dest / _DONE, {"source": TASKS_ARCHIVE.name, "files": manifest})
    return dest / "bigbench"


def extract_tasks(archive: Path, dest: Path, manifest: Mapping[str, str]) -> int:
    """Extract the files of ``manifest`` from ``archive`` (a tar.xz) into ``dest``:
    regular files only, names exactly the manifest's, each checked against its sha256; anything else
    in the archive is ignored. On any failure ``dest`` is removed. Returns the number of files."""
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:xz") as tar:
            for m in tar:
                if m.name not in manifest or not m.isfile() or (fh := tar.extractfile(m)) is None:
                    continue
                blob = fh.read()
                if (got := hashlib.sha256(blob).hexdigest()) != manifest[m.name]:
                    raise DataError(
                        f"{archive.name}: {m.name} has sha256 {got}, expected {manifest[m.name]}; the hpr "
                        "installation is damaged: reinstall hpr, or pass --data-dir / HPR_DATA_DIR with "
                        "the task files"
                    )
                write_bytes(confined(dest, m.name), blob)
                seen.add(m.name)
        if missing := sorted(set(manifest) - seen):
            raise DataError(
                f"{archive.name} lacks {len(missing)} task files ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); the hpr "
                "installation is damaged: reinstall hpr, or pass --data-dir / HPR_DATA_DIR with the task files"
            )
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise DataError(f"cannot read {archive} ({exc}); reinstall hpr, or pass --data-dir / HPR_DATA_DIR") from exc
    except DataError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return len(seen)


def pack_tasks(src: Path, archive: Path, manifest: Path) -> dict[str, str]:
    """Write the BIG-bench task files under ``src`` (a ``benchmark_tasks`` folder, e.g. of the
    sdist) that hpr needs into ``archive`` (tar.xz; same bytes for the same files: sorted, no
    times or owners) and their ``sha256sum`` list into ``manifest``. Returns that list."""
    rels = sorted(
        p.relative_to(src).as_posix()
        for p in src.rglob("*.json")
        if p.is_file() and _BB_WANTED.match(p.relative_to(src).as_posix())
    )
    if not rels:
        raise DataError(f"{src} holds none of the BIG-bench task files; pass the benchmark_tasks folder")
    sums: dict[str, str] = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in rels:
            blob = (src / rel).read_bytes()
            sums[rel] = hashlib.sha256(blob).hexdigest()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(blob), 0o644, 0
            tar.addfile(info, io.BytesIO(blob))
    write_bytes(archive, lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    write_text(manifest, "".join(f"{sums[rel]}  {rel}\n" for rel in rels))
    return sums


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
