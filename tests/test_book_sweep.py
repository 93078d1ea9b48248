"""``build_book(sweep=...)`` shows a sweep's table while the book builds and puts the study's back."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpr.study import book


def _root(tmp_path: Path, table: str | None) -> Path:
    (tmp_path / "_config.yml").write_text("title: t\n")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (tmp_path / "sweep").mkdir()
    if table is not None:
        (tmp_path / "book" / "_generated").mkdir(parents=True)
        (tmp_path / "book" / "_generated" / "results.md").write_text(table)
    return tmp_path


@pytest.mark.parametrize("fails", [False, True])
@pytest.mark.parametrize("committed", ["| the study's table |\n", None])
def test_sweep_table_only_while_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool, committed: str | None
) -> None:
    root = _root(tmp_path, committed)
    table = root / "book" / "_generated" / "results.md"
    seen: list[str] = []

    def fake_build(base: Path, strict: bool, cache: Path | None) -> book.BuildResult:
        seen.append(table.read_text())
        if fails:
            raise book.BookError("jupyter-book build failed")
        return book.BuildResult(base / "_build" / "html", 0.0, 0)

    monkeypatch.setattr(book, "_build", fake_build)
    if fails:
        with pytest.raises(book.BookError):
            book.build_book(root, sweep="sweep")
    else:
        book.build_book(root, sweep="sweep")
    assert seen and "No results in this sweep yet" in seen[0]  # the sweep's table was built
    if committed is None:
        assert not table.exists()
    else:
        assert table.read_text() == committed  # the study's table is back


def test_missing_sweep_folder_leaves_table(tmp_path: Path) -> None:
    root = _root(tmp_path, "| kept |\n")
    with pytest.raises(book.BookError, match="not a sweep folder"):
        book.build_book(root, sweep="nowhere")
    assert (root / "book" / "_generated" / "results.md").read_text() == "| kept |\n"
