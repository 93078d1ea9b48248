"""Build the Jupyter Book so that it renders offline.

MathJax 3, RequireJS and the ipywidgets HTML manager are fetched once with ``npm pack``
(exact versions below, cached under ``cache_dir()/npm``) and copied into ``_build/vendor``,
which ``_config.yml`` lists in ``html_static_path``; Sphinx then serves them from
``_build/html/_static``. They are deliberately not in a root folder named ``_static``: Jupyter
Book injects every ``.js`` under such a folder into every page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from hpr import _files
from hpr.errors import HPRError

#: npm packages served by the book, pinned.
NPM_PACKAGES: dict[str, str] = {
    "mathjax": "3.2.2",
    "@jupyter-widgets/html-manager": "1.0.15",
    "requirejs": "2.3.8",
}

#: (package, path inside the tarball's ``package/`` folder, destination under the vendor dir).
#: A path ending in ``/`` copies a whole folder.
VENDOR_FILES: tuple[tuple[str, str, str], ...] = (
    ("mathjax", "es5/tex-chtml.js", "mathjax/tex-chtml.js"),
    ("mathjax", "es5/output/chtml/fonts/woff-v2/", "mathjax/output/chtml/fonts/woff-v2/"),
    ("mathjax", "es5/input/tex/extensions/", "mathjax/input/tex/extensions/"),
    ("mathjax", "es5/ui/", "mathjax/ui/"),
    ("mathjax", "es5/a11y/", "mathjax/a11y/"),
    ("mathjax", "LICENSE", "mathjax/LICENSE"),
    ("requirejs", "require.js", "requirejs/require.js"),
    ("@jupyter-widgets/html-manager", "dist/", "@jupyter-widgets/html-manager/dist/"),
)

#: Files of a copied folder that are skipped (source maps, unused bundles).
_SKIP = re.compile(r"\.map$|^(embed|libembed-amd)\.js$")

VENDOR_DIR = Path("_build") / "vendor"

#: The widget manager typesets labels with the MathJax 2 API (``MathJax.Hub.Queue``); the book
#: loads MathJax 3. This shim maps that call onto MathJax 3 (served as ``shims/mathjax2-shim.js``).
MATHJAX2_SHIM = """(function () {
  // Every object assigned to window.MathJax (the page's config, then MathJax 3 itself) gets a
  // MathJax 2 style Hub.Queue that typesets with MathJax 3.
  function hub(el) { if (el && current && current.typesetPromise) { current.typesetPromise([el]).catch(function () {}); } }
  function attach(v) { if (v && typeof v === "object" && !v.Hub) { v.Hub = {Queue: function (cmd) { hub(cmd && cmd[2]); }}; } return v; }
  var current = attach(window.MathJax);
  Object.defineProperty(window, "MathJax", {configurable: true, enumerable: true,
    get: function () { return current; }, set: function (v) { current = attach(v); }});
})();
"""

#: Remote script/style URLs that must not appear in the built pages.
_REMOTE = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["'](https?:)?//[^"']+["']""", re.I)


class BookError(HPRError):
    """The book could not be built."""


def _tarball_name(package: str, version: str) -> str:
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def npm_tarball(package: str, version: str, cache: Path | None = None) -> Path:
    """Path of ``package@version``'s npm tarball, fetched with ``npm pack`` on first use."""
    folder = (cache or _files.cache_dir()) / "npm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _tarball_name(package, version)
    if path.is_file():
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise BookError(
            f"{path.name} is not cached and `npm` is not installed; install Node.js/npm "
            f"(apt-get install -y npm) or place the tarball at {path}"
        )
    proc = subprocess.run(
        [npm, "pack", f"{package}@{version}", "--pack-destination", str(folder), "--silent"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not path.is_file():
        raise BookError(f"npm pack {package}@{version} failed: {proc.stderr.strip()[-500:]}")
    return path


def vendor_assets(dest: Path, cache: Path | None = None) -> Path:
    """Copy the pinned JS assets into ``dest`` (idempotent); returns ``dest``."""
    stamp = dest / ".versions"
    want = _files.stable_hash([NPM_PACKAGES, VENDOR_FILES, MATHJAX2_SHIM])
    if stamp.is_file() and stamp.read_text().strip() == want:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tars = {p: tarfile.open(npm_tarball(p, v, cache)) for p, v in NPM_PACKAGES.items()}
    try:
        for package, src, target in VENDOR_FILES:
            tar = tars[package]
            prefix = f"package/{src}"
            members = [
                m
                for m in tar.getmembers()
                if m.isfile() and (m.name == prefix if not src.endswith("/") else m.name.startswith(prefix))
            ]
            if not members:
                raise BookError(f"{package} tarball has no {src}; update VENDOR_FILES")
            for m in members:
                rel = m.name[len(prefix) :] if src.endswith("/") else ""
                if rel and _SKIP.search(Path(rel).name):
                    continue
                out = tmp / target / rel if rel else tmp / target
                out.parent.mkdir(parents=True, exist_ok=True)
                fh = tar.extractfile(m)
                assert fh is not None
                out.write_bytes(fh.read())
    finally:
        for t in tars.values():
            t.close()
    # not "hpr/": Sphinx applies exclude_patterns (which list hpr/**) to static files too
    (tmp / "shims").mkdir(parents=True, exist_ok=True)
    (tmp / "shims" / "mathjax2-shim.js").write_text(MATHJAX2_SHIM)
    (tmp / ".versions").write_text(want + "\n")
    tmp.rename(dest)
    return dest


@dataclass(frozen=True)
class BuildResult:
    html: Path
    seconds: float
    pages: int


_INLINE_SCRIPT = re.compile(r"^\s*<script>(?:const|let|var) [^<]*</script>\s*$")


def dedupe_inline_scripts(page: Path) -> bool:
    """Drop repeated identical one-line inline scripts from ``page`` (Jupyter Book 1.0 registers
    sphinx-thebe and togglebutton twice, and a second ``const`` declaration is a console error)
    and give the theme's colour mode a valid default."""
    text = page.read_text(encoding="utf-8")
    # The book theme leaves the colour mode empty, which the theme's script reports as an error.
    fixed = text.replace('data-default-mode=""', 'data-default-mode="auto"').replace(
        'localStorage.getItem("mode") || ""', 'localStorage.getItem("mode") || "auto"'
    )
    lines = fixed.splitlines(keepends=True)
    seen: set[str] = set()
    out = []
    for line in lines:
        if _INLINE_SCRIPT.match(line):
            if line.strip() in seen:
                continue
            seen.add(line.strip())
        out.append(line)
    if len(out) == len(lines) and fixed == text:
        return False
    _files.write_text(page, "".join(out))
    return True


_MANAGER_DIST = Path("@jupyter-widgets") / "html-manager" / "dist"


def copy_widget_fonts(html_dir: Path, page_dirs: set[Path]) -> None:
    """Copy the widget manager's font files next to the pages that load it: the manager resolves
    them relative to the page, not to its script."""
    src = html_dir / "_static" / _MANAGER_DIST
    fonts = (
        [f for f in src.iterdir() if f.suffix in {".woff", ".woff2", ".ttf", ".eot", ".svg"}] if src.is_dir() else []
    )
    for d in page_dirs:
        # webpack's automatic public path gives either folder, depending on load order
        for dest in (d / _MANAGER_DIST, d / "@jupyter-widgets"):
            dest.mkdir(parents=True, exist_ok=True)
            for f in fonts:
                shutil.copyfile(f, dest / f.name)


def remote_references(html_dir: Path) -> dict[str, list[str]]:
    """Pages of the built book that load scripts or stylesheets from the network."""
    found: dict[str, list[str]] = {}
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        refs = [m.group(0) for m in _REMOTE.finditer(text)]
        if refs:
            found[str(page.relative_to(html_dir))] = refs
    return found


def build_book(
    root: str | Path = ".",
    strict: bool = True,
    cache: Path | None = None,
    runs_dir: str | Path = "runs/book",
    sweep: str | Path | None = None,
) -> BuildResult:
    """Generate the results table, vendor the JS assets and run ``jupyter-book build root -W``.

    The results chapter includes ``book/_generated/results.md``, written here from the results
    files under ``runs_dir`` (relative to ``root``) by ``hpr.study.results.write_results_markdown``; without
    results files (a fresh clone) the committed table of the last run is kept. With ``sweep`` (a
    folder ``hpr sweep`` wrote), the chapter shows the sweep's results aggregated over its points
    instead (``hpr.study.sweep.sweep_markdown``), and the results table on disk is restored afterwards.

    Raises ``BookError`` when the build fails or a page still loads something remotely.
    """
    base = Path(root).resolve()
    if not (base / "_config.yml").is_file() or not (base / "_toc.yml").is_file():
        raise BookError(f"{base} has no _config.yml/_toc.yml; run `hpr book` from the repository root")
    from hpr.study.results import collect_results, write_results_markdown

    runs = Path(runs_dir) if Path(runs_dir).is_absolute() else base / runs_dir
    table = base / "book" / "_generated" / "results.md"
    if sweep is None:
        if collect_results(runs) or not table.is_file():  # keep the committed table when there is no run here
            write_results_markdown(runs, table)
        return _build(base, strict, cache)
    from hpr.study.sweep import sweep_markdown

    where = Path(sweep) if Path(sweep).is_absolute() else base / sweep
    if not where.is_dir():
        raise BookError(f"{where} is not a sweep folder; run `hpr sweep --folder {sweep} ...` first")
    # The sweep's table stands in for the study's only while the book builds: the committed
    # results.md (the main study's table) is put back afterwards, even when the build fails.
    kept = table.read_text(encoding="utf-8") if table.is_file() else None
    _files.write_text(table, sweep_markdown(where))
    try:
        return _build(base, strict, cache)
    finally:
        if kept is None:
            table.unlink(missing_ok=True)
        else:
            _files.write_text(table, kept)


def _build(base: Path, strict: bool, cache: Path | None) -> BuildResult:
    """Vendor the JS assets, run ``jupyter-book build base`` and check the HTML renders offline."""
    vendor_assets(base / VENDOR_DIR, cache)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(base)]
    if strict:
        cmd += ["-W", "--keep-going"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=base, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-40:]
        raise BookError("jupyter-book build failed:\n" + "\n".join(tail))
    html = base / "_build" / "html"
    widget_dirs = set()
    for page in html.rglob("*.html"):
        dedupe_inline_scripts(page)
        if "html-manager/dist/embed-amd.js" in page.read_text(encoding="utf-8"):
            widget_dirs.add(page.parent)
    copy_widget_fonts(html, widget_dirs)
    remote = remote_references(html)
    if remote:
        raise BookError(f"pages load remote resources (the book must render offline): {remote}")
    return BuildResult(html, seconds, len(list(html.rglob("*.html"))))


__all__ = [
    "NPM_PACKAGES",
    "VENDOR_DIR",
    "BookError",
    "BuildResult",
    "build_book",
    "dedupe_inline_scripts",
    "npm_tarball",
    "remote_references",
    "vendor_assets",
]
