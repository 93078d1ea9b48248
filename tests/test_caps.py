"""hpr.data.datasets.cap_records / strata / allocate: seeded, stratified, proportional, input order."""

from __future__ import annotations

import pytest

from hpr.data import datasets as data
from hpr.data.records import Record
from hpr.errors import ParameterError


def _bbq(counts: dict[str, int]) -> list[Record]:
    out = []
    for sub, n in counts.items():
        for i in range(n):
            out.append(Record(f"bbq-{sub}-{i}", "q", ("a", "b"), (0,), {"subtask": sub}))
    return out


def test_allocate_largest_remainder() -> None:
    # quotas 10 * (5, 3, 2) / 10 = 5, 3, 2 exactly
    assert data.allocate({"a": 5, "b": 3, "c": 2}, 10) == {"a": 5, "b": 3, "c": 2}
    # cap 4 of (5, 3, 2): quotas 2.0, 1.2, 0.8 -> floors 2, 1, 0; one left goes to c (0.8)
    assert data.allocate({"a": 5, "b": 3, "c": 2}, 4) == {"a": 2, "b": 1, "c": 1}
    # equal remainders: the larger stratum, then the name, wins
    assert data.allocate({"x": 1, "y": 1, "z": 2}, 2) == {"x": 1, "y": 0, "z": 1}
    assert sum(data.allocate({"p": 7, "q": 11, "r": 13}, 17).values()) == 17


def test_cap_records_stratified_seeded_in_order() -> None:
    recs = _bbq({"age_ambig": 50, "age_disambig": 30, "ses_ambig": 20})
    got = data.cap_records("bbq", recs, 10, seed=3)
    assert len(got) == 10
    assert data.strata("bbq", got) == {"age_ambig": 5, "age_disambig": 3, "ses_ambig": 2}
    pos = [recs.index(r) for r in got]
    assert pos == sorted(pos)  # input order
    assert got == data.cap_records("bbq", recs, 10, seed=3)  # deterministic
    assert got != data.cap_records("bbq", recs, 10, seed=4)  # a sample, not a prefix
    assert got != recs[:10]
    assert data.cap_records("bbq", recs, None, 0) == recs and data.cap_records("bbq", recs, 500, 0) == recs


def test_strata_per_dataset() -> None:
    tox = [Record(f"toxigen-{i}", "p", ("No", "Yes"), (int(i < 3),)) for i in range(10)]
    assert data.strata("toxigen", tox) == {"hateful": 3, "not hateful": 7}
    capped = data.cap_records("toxigen", tox, 5, seed=0)
    assert data.strata("toxigen", capped) == {"hateful": 1, "not hateful": 4}  # 1.5/3.5: tie -> larger
    tqa = [
        Record(f"truthfulqa-{i}", "q", ("a", "b"), (0,), {"category": "Law" if i % 2 else "Health"}) for i in range(6)
    ]
    assert data.strata("truthfulqa", tqa) == {"Health": 3, "Law": 3}
    seq = [Record(f"seq-{i}", "q", ("a", "b"), (0,)) for i in range(9)]
    assert data.strata("seq", seq) == {"": 9} and len(data.cap_records("seq", seq, 4, 1)) == 4


def test_cap_errors() -> None:
    recs = _bbq({"a_ambig": 3})
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ParameterError, match="cap must be a positive integer"):
            data.cap_records("bbq", recs, bad, 0)  # type: ignore[arg-type]
