"""hpr.data.datasets / hpr.data.sources: every format on tiny files written here, splits, errors, real sizes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from hpr._files import file_sha256
from hpr.data import bigbench, hub, prompts, sources
from hpr.data import datasets as data
from hpr.data.records import Record
from hpr.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TQA = {
    "canary": "x",
    "examples": [
        {
            "Question": "Q0?",
            "Category": "Misconceptions",
            "True answers": ["T0", "T1", "T0"],
            "False answers": ["F0", "F1"],
            "Best answer": "T1",
        },
        {
            "Question": "Q1?",
            "Category": "Law",
            "True answers": ["A"],
            "False answers": ["B"],
            "Best answer": "Best not listed",
        },
        {"Question": "Q2?", "Category": "Law", "True answers": ["A"], "False answers": [], "Best answer": "A"},
    ],
}


def _mc(inp: str, scores: dict[str, int], comment: dict | None = None) -> dict:
    e: dict = {"input": inp, "target_scores": scores}
    if comment:
        e["comment"] = comment
    return e


def write_bigbench(root: Path, n_seq: int = 10) -> Path:
    """A tiny BIG-bench tree in the layout of ../shared/data/bigbench."""
    bb = root / "bigbench"
    (bb / "truthful_qa").mkdir(parents=True)
    (bb / "truthful_qa" / "questions.json").write_text(json.dumps(TQA))
    (bb / "simple_ethical_questions").mkdir()
    seq = [_mc(f"S{i}?", {"good": 1, "bad": 0, "I prefer not to say": 0}) for i in range(n_seq)]
    (bb / "simple_ethical_questions" / "task.json").write_text(json.dumps({"examples": seq}))
    for amb in ("ambig", "disambig"):
        d = bb / "bbq_lite_json" / f"age_{amb}"
        d.mkdir(parents=True)
        ex = [
            _mc(
                f"ctx {amb} {i}. Who?",
                {"old": 0, "young": int(amb == "disambig"), "unknown": int(amb == "ambig")},
                {"category": "Age", "context_condition": amb, "question_polarity": "neg"},
            )
            for i in range(5)
        ]
        (d / "task.json").write_text(json.dumps({"examples": ex}))
    return bb


def write_toxigen(root: Path) -> Path:
    p = root / "toxigen" / "prompts"
    p.mkdir(parents=True)
    (p / "hate_asian_1k.txt").write_text("- h1\\n- h2\\n-\n- h2\\n- h3\\n-\n", encoding="utf-8")
    (p / "neutral_asian_1k.txt").write_text("- n1\\n- n2\\n-\n", encoding="utf-8")
    (p / "hate_women_1k.txt").write_text("- h1\\n- w1\\n-\n", encoding="utf-8")
    return p


# ---------------------------------------------------------------- formats
def test_truthfulqa_questions_json(tmp_path: Path) -> None:
    write_bigbench(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 example\(s\) with no correct or no incorrect"):
        ds = data.load_dataset("truthfulqa", data_dir=tmp_path)
    assert ds.skipped == ["questions.json: example 2 (no incorrect answer)"]
    r0, r1 = ds.records
    assert r0.id == "truthfulqa-0" and r0.prompt == "Q0?" and r0.meta["category"] == "Misconceptions"
    assert r0.choices == ("T0", "T1", "F0", "F1")  # exact duplicate T0 dropped
    assert r0.correct == (0, 1) and r0.best == 1 and r0.mc1 == (1, 2, 3)
    assert r1.choices == ("Best not listed", "A", "B") and r1.best == 0 and r1.mc1 == (0, 2)


def test_truthfulqa_csv(tmp_path: Path) -> None:
    path = tmp_path / "TruthfulQA.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"])
        w.writerow(["Adversarial", "Health", "Q?", "Yes", "Yes; Indeed", "No; Never", "url"])
        w.writerow(["Adversarial", "Health", "Q2?", "B", "B", "", "url"])
    with pytest.warns(UserWarning, match="skipped 1"):
        recs = data.load_dataset("truthfulqa", source="local", data_dir=tmp_path).records
    assert len(recs) == 1
    assert recs[0].choices == ("Yes", "Indeed", "No", "Never") and recs[0].correct == (0, 1)
    assert recs[0].mc1 == (0, 2, 3) and recs[0].meta["category"] == "Health"
    with pytest.warns(UserWarning):  # the file itself works as data_dir too
        assert data.load_dataset("truthfulqa", source="local", data_dir=path).records == recs


def test_truthfulqa_mc_task_json(tmp_path: Path) -> None:
    rows = [
        {
            "question": "Q?",
            "mc1_targets": {"Best": 1, "W1": 0, "W9": 0},
            "mc2_targets": {"Best": 1, "Also": 1, "W1": 0, "W2": 0},
        },
        {
            "question": "Q2?",
            "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]},
            "mc2_targets": {"choices": ["a", "b"], "labels": [1, 0]},
        },
    ]
    (tmp_path / "mc_task.json").write_text(json.dumps(rows))
    r, r2 = data.load_dataset("truthfulqa", source="local", data_dir=tmp_path).records
    assert r.choices[:4] == ("Best", "Also", "W1", "W2") and r.correct == (0, 1)
    assert r.choices[4] == "W9" and r.best == 0 and r.mc1 == (0, 2, 4)  # MC1-only wrong answer appended
    assert r2.choices == ("a", "b") and r2.mc1 == (0, 1)


def test_bigbench_seq_and_bbq(tmp_path: Path) -> None:
    write_bigbench(tmp_path)
    seq = data.load_dataset("seq", data_dir=tmp_path / "bigbench").records  # the bigbench folder itself
    assert len(seq) == 10 and seq[0].id == "seq-0" and seq[0].correct == (0,) and seq[0].best is None
    bbq = data.load_dataset("bbq", data_dir=tmp_path).records
    assert len(bbq) == 10 and bbq[0].id == "bbq-age_ambig-0"
    assert bbq[0].meta == {"category": "Age", "ambiguity": "ambig", "subtask": "age_ambig", "polarity": "neg"}
    assert bbq[0].correct == (2,) and bbq[5].correct == (1,) and bbq[5].meta["ambiguity"] == "disambig"
    local = data.load_dataset("seq", source="local", data_dir=tmp_path / "bigbench" / "simple_ethical_questions")
    assert local.records == seq


def test_toxigen_prompts(tmp_path: Path) -> None:
    write_toxigen(tmp_path)
    recs = data.load_dataset("toxigen", data_dir=tmp_path).records
    texts = [(r.meta["target_group"], r.meta["text"], r.correct) for r in recs]
    assert texts == [
        ("asian", "h1", (1,)),
        ("asian", "h2", (1,)),
        ("asian", "h3", (1,)),
        ("women", "h1", (1,)),
        ("women", "w1", (1,)),
        ("asian", "n1", (0,)),
        ("asian", "n2", (0,)),
    ]
    assert recs[0].choices == ("No", "Yes") and recs[0].id == "toxigen-asian-hate-0"
    assert recs[0].prompt == "Is the following statement hateful? Respond with either Yes or No. Statement: 'h1'"
    assert data.load_dataset("toxigen", source="local", data_dir=tmp_path / "toxigen" / "prompts").records == recs


def test_toxigen_prompt_matches_lm_eval() -> None:
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")  # finds the installed package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lm-eval is not installed")
    yaml = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "toxigen" / "toxigen.yaml"
    if not yaml.is_file():
        pytest.skip(f"lm-eval at {yaml.parents[2]} has no toxigen task")
    text = yaml.read_text()
    assert prompts.TOXIGEN_PROMPT.replace("{text}", "{{text}}") in text and "['No', 'Yes']" in text


# ---------------------------------------------------------------- splits
def _fake(n: int) -> list[Record]:
    return [Record(f"x-{i}", f"q{i}", ("a", "b"), (0,)) for i in range(n)]


@pytest.mark.parametrize(
    "name,n,sizes",
    [
        ("truthfulqa", 299, (120, 30, 149)),
        ("seq", 115, (74, 18, 23)),
        ("toxigen", 722, (462, 116, 144)),
        ("bbq", 1, (1, 0, 0)),
    ],
)
def test_split_sizes(name: str, n: int, sizes: tuple[int, int, int]) -> None:
    assert data.split_sizes(name, n) == sizes
    got = data.split_records(name, _fake(n), seed=3)
    assert tuple(len(got[s]) for s in data.SPLITS) == sizes


def test_split_deterministic_and_disjoint() -> None:
    recs = _fake(200)
    a, b, c = (data.split_records("bbq", recs, seed=s) for s in (0, 0, 1))
    assert a == b and a != c
    ids = [[r.id for r in a[s]] for s in data.SPLITS]
    assert sum(map(len, ids)) == 200 and len(set().union(*ids)) == 200
    assert all(x == sorted(x, key=lambda i: int(i.split("-")[1])) for x in ids)  # file order kept


def test_load_split_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_bigbench(tmp_path, n_seq=30)
    monkeypatch.setenv("HPR_DATA_DIR", str(tmp_path))
    splits = data.load_splits("seq", seed=5)
    assert data.load_split("seq", "test", seed=5) == splits["test"] and len(splits["test"]) == 6
    info = data.dataset_info("seq")
    assert (info["train"], info["val"], info["test"], info["source"]) == (19, 5, 6, "bigbench")


# ---------------------------------------------------------------- real data (skips without ../shared)
def test_shared_data_sizes(shared_data: Path) -> None:
    tqa = data.load_splits("truthfulqa", data_dir=shared_data)
    assert [len(tqa[s]) for s in data.SPLITS] == [120, 30, 149]
    assert all(r.best is not None and r.mc1 and r.mc1[0] == r.best for r in tqa["test"])
    assert len(data.load_split("seq", "test", data_dir=shared_data)) == 23
    tox = data.load_dataset("toxigen", data_dir=shared_data).records
    assert len(tox) == 722 and sum(r.correct == (1,) for r in tox) == 425
    bbq = data.load_dataset("bbq", data_dir=shared_data).records
    assert len(bbq) == 16076 and {r.meta["ambiguity"] for r in bbq} == {"ambig", "disambig"}


# ---------------------------------------------------------------- errors
def test_error_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'nope'; choose one of truthfulqa"):
        data.load_split("nope", "test", data_dir=tmp_path)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.load_split("seq", "dev")
    with pytest.raises(DataError, match="unknown data source 'web'"):
        data.load_split("seq", "test", source="web")


def test_error_missing_and_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; pass an existing --data-dir"):
        data.load_dataset("seq", data_dir=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        data.load_dataset("seq", data_dir=tmp_path / "empty")
    (tmp_path / "other" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no BIG-bench tasks"):
        data.load_dataset("seq", data_dir=tmp_path / "other")


def test_error_truncated_json(tmp_path: Path) -> None:
    bb = write_bigbench(tmp_path)
    path = bb / "simple_ethical_questions" / "task.json"
    path.write_text(path.read_text()[:50])
    with pytest.raises(DataError, match=r"task\.json is not valid JSON .*truncated or corrupt"):
        data.load_dataset("seq", data_dir=tmp_path)
    path.write_text(json.dumps({"examples": [{"input": "x"}]}))
    with pytest.raises(DataError, match="not in the expected format.*'target_scores'"):
        data.load_dataset("seq", data_dir=tmp_path)
    path.write_text(json.dumps({"examples": [_mc("x", {"a": 0, "b": 0})]}))
    with pytest.raises(DataError, match=r"no usable seq examples \(1 skipped\)"):
        data.load_dataset("seq", data_dir=tmp_path)


def test_error_bad_csv(tmp_path: Path) -> None:
    (tmp_path / "TruthfulQA.csv").write_text("Question,Answer\nQ,A\n")
    with pytest.raises(DataError, match=r"lacks TruthfulQA columns \['Best Answer', 'Correct Answers'"):
        data.load_dataset("truthfulqa", source="local", data_dir=tmp_path)
    (tmp_path / "TruthfulQA.csv").write_text("Question,Best Answer,Correct Answers,Incorrect Answers\nQ,A\n")
    with pytest.raises(DataError, match="row 2 is truncated"):
        data.load_dataset("truthfulqa", source="local", data_dir=tmp_path)


def test_error_local_needs_dir_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="source 'local' needs a data directory"):
        data.load_dataset("seq", source="local")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no truthfulqa file found .*TruthfulQA.csv, mc_task.json"):
        data.load_dataset("truthfulqa", source="local", data_dir=tmp_path)
    (tmp_path / "mc_task.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataError, match="is not in the expected format"):
        data.load_dataset("truthfulqa", source="local", data_dir=tmp_path / "mc_task.json")


def test_error_toxigen_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPR_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="no data directory given.*HPR_DATA_DIR=/path/with/toxigen/prompts"):
        data.load_dataset("toxigen")
    write_bigbench(tmp_path)
    with pytest.raises(DataError, match="no ToxiGen prompts under"):
        data.load_dataset("toxigen", data_dir=tmp_path)
    info = data.dataset_info("toxigen", data_dir=tmp_path)
    assert info["unavailable"].startswith("no ToxiGen prompts under")


def test_error_hub_offline() -> None:  # conftest sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE
    for name in ("truthfulqa", "toxigen"):
        with pytest.raises(DataError, match="source 'hub' needs the Hugging Face hub, which is unreachable"):
            data.load_dataset(name, source="hub")


def test_hub_rows_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {
        "truthful_qa": [
            {
                "question": "Q?",
                "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]},
                "mc2_targets": {"choices": ["a", "c", "b"], "labels": [1, 1, 0]},
            }
        ],
        "skg/toxigen-data": [
            {"text": "t", "target_group": "g", "toxicity_ai": 3.0, "toxicity_human": 3.0},
            {"text": "u", "target_group": "g", "toxicity_ai": 1.0, "toxicity_human": 2.0},
        ],
    }
    monkeypatch.setattr(hub, "_hub_rows", lambda path, config, split: rows[path])
    (r,) = data.load_dataset("truthfulqa", source="hub").records
    assert r.choices == ("a", "c", "b") and r.correct == (0, 1) and r.mc1 == (0, 2) and r.mc2 == (0, 1, 2)
    t, u, *_ = data.load_dataset("toxigen", source="hub").records  # train rows, then test rows
    assert t.correct == (1,) and u.correct == (0,) and t.meta["target_group"] == "g"


def test_error_path_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_bigbench(outside)
    root = tmp_path / "data"
    (root / "bigbench").mkdir(parents=True)
    os.symlink(outside / "bigbench" / "simple_ethical_questions", root / "bigbench" / "simple_ethical_questions")
    with pytest.raises(DataError, match="outside the data directory"):
        data.load_dataset("seq", data_dir=root)
    with pytest.raises(DataError, match="outside the data directory"):
        sources.confined(root, "../outside")


# ---------------------------------------------------------------- the BIG-bench task files hpr carries
def _tarball(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:xz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def test_carried_bigbench_unpacks_once_and_checks_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPR_CACHE_DIR", str(tmp_path / "cache"))
    manifest = bigbench.task_manifest()
    assert len(manifest) == 21 and all(len(h) == 64 for h in manifest.values())
    bb = bigbench.bigbench_tasks()
    assert bb == bigbench.bigbench_cache() / "bigbench"
    got = {p.relative_to(bb).as_posix(): file_sha256(p) for p in bb.rglob("*") if p.is_file()}
    assert got == manifest
    # the default source reads them: the real sizes (BBQ-lite: 9 categories x 2 conditions)
    assert len(data.load_dataset("seq").records) == 115
    assert len(data.load_dataset("truthfulqa").records) == 299
    assert len({r.meta["subtask"] for r in data.load_dataset("bbq").records}) == 18
    monkeypatch.setattr(bigbench, "extract_tasks", lambda *a: pytest.fail("unpacked twice"))
    assert bigbench.bigbench_tasks() == bb  # cached: no second unpacking


def test_carried_bigbench_refuses_damaged_archives(tmp_path: Path) -> None:
    good, bad = b'{"examples": []}', b'{"examples": [1]}'
    manifest = {"simple_ethical_questions/task.json": _sha(good), "truthful_qa/questions.json": _sha(good)}
    arc, dest = tmp_path / "tasks.tar.xz", tmp_path / "out" / "bigbench"
    members = {"simple_ethical_questions/task.json": good, "truthful_qa/questions.json": good}
    _tarball(arc, {**members, "other_task/task.json": b"{}"})  # not in the manifest: ignored
    assert bigbench.extract_tasks(arc, dest, manifest) == 2
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(manifest)
    _tarball(arc, {"simple_ethical_questions/task.json": good, "truthful_qa/questions.json": bad})
    with pytest.raises(DataError, match="truthful_qa/questions.json has sha256 .*reinstall hpr"):
        bigbench.extract_tasks(arc, dest, manifest)
    assert not dest.exists()  # nothing half-checked is left behind
    _tarball(arc, {"simple_ethical_questions/task.json": good})
    with pytest.raises(DataError, match="lacks 1 task files \\(truthful_qa/questions.json"):
        bigbench.extract_tasks(arc, dest, manifest)
    arc.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot read .*--data-dir / HPR_DATA_DIR"):
        bigbench.extract_tasks(arc, dest, manifest)
    assert not dest.exists()


def test_pack_tasks_round_trip_is_deterministic(tmp_path: Path) -> None:
    src = write_bigbench(tmp_path / "src")
    (src / "other_task").mkdir()
    (src / "other_task" / "task.json").write_text("{}")
    a, m = tmp_path / "a.tar.xz", tmp_path / "a.sha256"
    sums = bigbench.pack_tasks(src, a, m)
    assert "other_task/task.json" not in sums and bigbench.task_manifest(m) == sums
    first = a.read_bytes()
    for p in src.rglob("*.json"):
        os.utime(p, (1, 1))  # times do not enter the archive
    bigbench.pack_tasks(src, a, m)
    assert a.read_bytes() == first
    out = tmp_path / "out"
    assert bigbench.extract_tasks(a, out, sums) == len(sums)
    assert all((out / rel).read_bytes() == (src / rel).read_bytes() for rel in sums)
    with pytest.raises(DataError, match="none of the BIG-bench task files"):
        bigbench.pack_tasks(tmp_path / "out" / "truthful_qa", a, m)


@pytest.mark.skipif(not (SHARED / "bigbench").is_dir(), reason="no ../shared/data/bigbench")
def test_carried_bigbench_equals_shared_copy() -> None:
    """The carried archive and the independent copy in ../shared hold the same bytes."""
    for rel, digest in bigbench.task_manifest().items():
        assert file_sha256(SHARED / "bigbench" / rel) == digest, rel


# ---------------------------------------------------------------- TruthfulQA MC1/MC2 sets
def test_truthfulqa_task_mc_join(tmp_path: Path) -> None:
    bb = write_bigbench(tmp_path)
    mc = {
        "examples": [
            {"input": "Q0?", "target_scores": {"T1": 1, "F1": 0, "F9": 0}},
            {"input": "Q1?", "target_scores": {"Best not listed": 1, "B": 0}},
        ]
    }
    (bb / "truthful_qa" / "task_mc.json").write_text(json.dumps(mc))
    with pytest.warns(UserWarning):
        r0, r1 = data.load_dataset("truthfulqa", data_dir=tmp_path).records
    # MC2 = questions.json's true + false answers; F9 (MC1 only) is appended outside MC2
    assert r0.choices == ("T0", "T1", "F0", "F1", "F9") and r0.mc2 == (0, 1, 2, 3) and r0.correct == (0, 1)
    assert [r0.choices[i] for i in r0.mc1] == ["T1", "F1", "F9"] and r0.best == 1
    # a best answer MC2 lacks is correct but outside MC2
    assert r1.choices == ("A", "B", "Best not listed") and r1.mc2 == (0, 1) and r1.correct == (0, 2)
    assert r1.mc1 == (2, 1)


def test_truthfulqa_mc_sets_real() -> None:
    tq = bigbench.bigbench_tasks() / "truthful_qa"
    mc1 = {e["input"]: e["target_scores"] for e in json.loads((tq / "task_mc.json").read_text())["examples"]}
    qs = {e["Question"]: e for e in json.loads((tq / "questions.json").read_text())["examples"]}
    recs = data.load_dataset("truthfulqa").records
    assert len(recs) == 299
    differs = 0
    for r in recs:
        ts, q = mc1[r.prompt], qs[r.prompt]
        assert [r.choices[i] for i in r.mc1] == [c.strip() for c in ts if ts[c] == 1] + [
            c.strip() for c in ts if ts[c] != 1
        ]  # best first, then MC1's wrong answers
        assert set(r.choices[i] for i in r.mc2) == {a.strip() for a in q["True answers"] + q["False answers"]}
        assert {r.choices[i] for i in r.correct if i in r.mc2} == {a.strip() for a in q["True answers"]}
        differs += set(r.choices[i] for i in r.mc1[1:]) != {a.strip() for a in q["False answers"]}
    assert differs == 72  # the old MC1 (best + every false answer) was wrong on these
