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

from . import io
from .errors import HPRError

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
    ("@jupyter-widgets/html-manager", "dist/", "html-manager/"),
)

#: Files of a copied folder that are skipped (source maps, unused bundles).
_SKIP = re.compile(r"\.map$|^(embed|libembed-amd)\.js$")

VENDOR_DIR = Path("_build") / "vendor"

#: Remote script/style URLs that must not appear in the built pages.
_REMOTE = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["'](https?:)?//[^"']+["']""", re.I)


class BookError(HPRError):
    """The book could not be built."""


def _tarball_name(package: str, version: str) -> str:
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def npm_tarball(package: str, version: str, cache: Path | None = None) -> Path:
    """Path of ``package@version``'s npm tarball, fetched with ``npm pack`` on first use."""
    folder = (cache or io.cache_dir()) / "npm"
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
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0 or not path.is_file():
        raise BookError(f"npm pack {package}@{version} failed: {proc.stderr.strip()[-500:]}")
    return path


def vendor_assets(dest: Path, cache: Path | None = None) -> Path:
    """Copy the pinned JS assets into ``dest`` (idempotent); returns ``dest``."""
    stamp = dest / ".versions"
    want = io.stable_hash([NPM_PACKAGES, VENDOR_FILES])
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
            members = [m for m in tar.getmembers() if m.isfile() and
                       (m.name == prefix if not src.endswith("/") else m.name.startswith(prefix))]
            if not members:
                raise BookError(f"{package} tarball has no {src}; update VENDOR_FILES")
            for m in members:
                rel = m.name[len(prefix):] if src.endswith("/") else ""
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
    (tmp / ".versions").write_text(want + "\n")
    tmp.rename(dest)
    return dest


@dataclass(frozen=True)
class BuildResult:
    html: Path
    seconds: float
    pages: int


def remote_references(html_dir: Path) -> dict[str, list[str]]:
    """Pages of the built book that load scripts or stylesheets from the network."""
    found: dict[str, list[str]] = {}
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        refs = [m.group(0) for m in _REMOTE.finditer(text)]
        if refs:
            found[str(page.relative_to(html_dir))] = refs
    return found


def build_book(root: str | Path = ".", strict: bool = True, cache: Path | None = None) -> BuildResult:
    """Vendor the JS assets and run ``jupyter-book build root -W`` (warnings are errors).

    Raises ``BookError`` when the build fails or a page still loads something remotely.
    """
    base = Path(root).resolve()
    if not (base / "_config.yml").is_file() or not (base / "_toc.yml").is_file():
        raise BookError(f"{base} has no _config.yml/_toc.yml; run `hpr book` from the repository root")
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
    remote = remote_references(html)
    if remote:
        raise BookError(f"pages load remote resources (the book must render offline): {remote}")
    return BuildResult(html, seconds, len(list(html.rglob("*.html"))))


__all__ = ["NPM_PACKAGES", "VENDOR_DIR", "BookError", "BuildResult", "build_book", "npm_tarball",
           "remote_references", "vendor_assets"]
