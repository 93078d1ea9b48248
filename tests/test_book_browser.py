"""The built book (-W, offline) in headless Chromium, and the rotation widget in a live Jupyter.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``) and ``selenium``; skipped with that reason when they are absent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from notebook_helpers import REPO, executed_study

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from chrome import chromium_paths, severe_console, start  # noqa: E402

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "test-artifacts"

_browser, _driver = chromium_paths()
try:
    import selenium  # noqa: F401

    _have_selenium = True
except ImportError:
    _have_selenium = False
needs_browser = pytest.mark.skipif(
    not (_browser and _driver and _have_selenium),
    reason="headless Chromium tests need `apt-get install -y chromium chromium-driver` and selenium",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hpr.study.book import build_book

    root, results = executed_study(tmp_path_factory.mktemp("book"))
    assert all(r.status == "ran" for r in results), [(r.name, r.error) for r in results]
    build_book(root, strict=True, runs_dir=root / "runs" / "book")
    return root / "_build" / "html"


@pytest.fixture(scope="module")
def browser() -> Any:
    if not (_browser and _driver and _have_selenium):
        pytest.skip("headless Chromium tests need `apt-get install -y chromium chromium-driver` and selenium")
    d = start()
    yield d
    d.quit()


def test_book_builds_strict_and_offline(built: Path) -> None:
    from hpr.study.book import remote_references

    assert (built / "index.html").is_file()
    pages = {p.relative_to(built).as_posix() for p in built.rglob("*.html")}
    for chapter in ("intro", "method", "reproduce", "notebooks", "results", "limitations"):
        assert f"book/{chapter}.html" in pages
    assert remote_references(built) == {}
    results = (built / "book" / "results.html").read_text(encoding="utf-8")
    # generated from the results files: Table 1 with our tiny model beside the paper's models
    assert "tiny random Llama MC1" in results and "Llama-2-7B-Chat MC1 (paper)" in results


def _pages(html: Path) -> list[Path]:
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.parts)


@needs_browser
def test_every_page_renders(built: Path, browser: Any) -> None:
    problems = []
    for page in _pages(built):
        browser.get(page.as_uri())
        deadline = time.time() + 10
        expects_math = "\\(" in page.read_text(encoding="utf-8") or "math notranslate" in page.read_text(
            encoding="utf-8"
        )
        while time.time() < deadline:
            done = browser.execute_script(
                "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
            )
            math = browser.execute_script("return document.querySelectorAll('mjx-container').length")
            if done and (math or not expects_math):
                break
            time.sleep(0.2)
        rel = page.relative_to(built).as_posix()
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
        )
        if broken:
            problems.append(f"{rel}: images not loaded {broken}")
        if expects_math and not math:
            problems.append(f"{rel}: math not rendered")
        errors = severe_console(browser)
        if errors:
            problems.append(f"{rel}: console errors {errors}")
    assert not problems, "\n".join(problems)


@needs_browser
def test_jshtml_player_advances(built: Path, browser: Any) -> None:
    browser.get((built / "book" / "notebooks" / "06_rotate_activations.html").as_uri())
    slider = browser.find_element("css selector", "input.anim-slider, input[id^='_anim_slider']")
    before = int(slider.get_attribute("value"))
    play = browser.find_element("css selector", "button[onclick*='play_animation']")
    browser.execute_script("arguments[0].scrollIntoView()", play)
    play.click()
    deadline = time.time() + 10
    while time.time() < deadline and int(slider.get_attribute("value")) == before:
        time.sleep(0.2)
    assert int(slider.get_attribute("value")) != before
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "book-rotation-player.png"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LIVE_CELLS = [
    "import torch\nfrom hpr import study\nfrom hpr.lm.architectures import fingerprint\n"
    "from hpr.editor import HPR\nfrom hpr.editor_set import EditorSet\nfrom hpr.study.widget import RotationExplorer\n"
    "model, tok = study.get_model('tiny-random')\ntorch.manual_seed(0)\n"
    "editors = EditorSet({1: HPR(64), 2: HPR(64)}, fingerprint(model, 'tiny-random'), [1, 2])\n"
    "explorer = RotationExplorer(model, tok, editors, ['Q: Is the sky blue?\\nA:', 'Q: 2+2?\\nA:'])\n"
    "explorer.widget()",
]


READOUT = "return Array.from(document.querySelectorAll('.widget-html-content')).map(e => e.innerHTML).filter(t => t.includes('p(a')).join('|')"


@needs_browser
def test_live_jupyter_slider_changes_output(tmp_path: Path, browser: Any) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in LIVE_CELLS]
    nbformat.write(nb, str(tmp_path / "rotate.ipynb"))
    port, token = _free_port(), "hpr-test-token"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "notebook",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            "--ServerApp.open_browser=False",
            "--allow-root",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until(lambda: _kernels(base, token) is not None, 60, "the Jupyter server to answer")
        browser.get(f"{base}/notebooks/rotate.ipynb?token={token}")
        _wait(browser, "return !!document.querySelector('.jp-Notebook .jp-Cell')", 60)
        _wait(browser, "return !!document.querySelector('.jp-Notebook .jp-Cell .cm-content')", 60)
        _wait_until(
            lambda: any(k.get("execution_state") == "idle" for k in _kernels(base, token) or []),
            120,
            "the notebook's kernel to start and answer the page (execution_state idle)",
        )
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        browser.find_element("css selector", ".jp-Notebook .jp-Cell .cm-content").click()
        ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        _wait(browser, "return !!document.querySelector('.jupyter-widgets img')", 120)
        src0 = browser.execute_script("return document.querySelector('.jupyter-widgets img').src")
        html0 = browser.execute_script(READOUT)
        handles = browser.find_elements("css selector", ".widget-slider .noUi-handle")
        theta = handles[-1]  # layer, example, theta
        browser.execute_script("arguments[0].scrollIntoView()", theta)
        ActionChains(browser).drag_and_drop_by_offset(theta, 60, 0).perform()  # move theta right
        _wait(browser, f"return document.querySelector('.jupyter-widgets img').src !== {json.dumps(src0)}", 60)
        html1 = browser.execute_script(READOUT)
        assert html0 and html1 and html1 != html0
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "live-rotation-widget.png"))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_until(condition: Any, seconds: float, what: str) -> None:
    """Poll ``condition()`` until it is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def _wait(browser: Any, script: str, seconds: float) -> None:
    _wait_until(lambda: browser.execute_script(script), seconds, script)


def _kernels(base: str, token: str) -> list[dict[str, Any]] | None:
    """The Jupyter server's running kernels (``/api/kernels``), or None while it does not answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=2) as r:
            return list(json.loads(r.read()))
    except (OSError, urllib.error.URLError, ValueError):
        return None
