"""The static page of a tfjs export: Teachable Machine's library classifies photos in the browser, offline.

The page (index.html, page.js, page.css from `tfjs_page/`) loads two scripts that sit beside it,
never from a CDN: `tf.min.js` from the npm package `@tensorflow/tfjs` and
`teachablemachine-image.min.js` from `@teachablemachine/image`. retreino does not ship them
(about 1.1 MB, and they have their own releases and licences, Apache-2.0): they are copied from an
installed npm package at export time, found in this order:

1. `$RETREINO_NODE_MODULES` (a `node_modules` folder),
2. `./node_modules` in the current directory (`npm install @tensorflow/tfjs@1.3.1 @teachablemachine/image@0.8.5`),
3. the source checkout's `.cache/npm/node_modules` (what `make js` installs for the tests).

Without them the model files and the page are still written, and the export says what is missing.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

PAGE_DIR = Path(__file__).parent / "tfjs_page"
PAGE_FILES = ("index.html", "page.js", "page.css")
# file written beside the page -> (npm package, file inside it)
BUNDLES = {
    "tf.min.js": ("@tensorflow/tfjs", "dist/tf.min.js"),
    "teachablemachine-image.min.js": ("@teachablemachine/image", "dist/teachablemachine-image.min.js"),
}
NPM_INSTALL = "npm install @tensorflow/tfjs@1.3.1 @teachablemachine/image@0.8.5"


def node_modules_candidates() -> list[Path]:
    found = []
    if os.environ.get("RETREINO_NODE_MODULES"):
        found.append(Path(os.environ["RETREINO_NODE_MODULES"]))
    found.append(Path.cwd() / "node_modules")
    found.append(Path(__file__).resolve().parents[3] / ".cache" / "npm" / "node_modules")
    return found


def find_bundles() -> dict[str, Path]:
    """Each bundle's file in the first node_modules folder that has both packages ({} if none)."""
    for root in node_modules_candidates():
        files = {name: root / pkg / inner for name, (pkg, inner) in BUNDLES.items()}
        if all(f.is_file() for f in files.values()):
            return files
    return {}


def bundle_versions(files: dict[str, Path]) -> dict[str, str]:
    """npm package -> version, from the package.json next to each bundle."""
    out = {}
    for name, path in files.items():
        package = BUNDLES[name][0]
        try:
            out[package] = json.loads((path.parents[1] / "package.json").read_text(encoding="utf-8"))["version"]
        except (OSError, KeyError, ValueError):
            out[package] = "?"
    return out


def missing_bundles_message() -> str:
    where = ", ".join(str(p) for p in node_modules_candidates())
    return (
        f"the in-browser page needs tf.min.js and teachablemachine-image.min.js from npm; none found in {where}. "
        f"Run `{NPM_INSTALL}` here (or set RETREINO_NODE_MODULES), then export again"
    )


def write_page(folder: str | Path) -> tuple[list[str], dict[str, str]]:
    """Copy the page and the two bundles into `folder`; returns (files written, npm versions used).

    An empty versions dict means the bundles were not found (the page says so when opened).
    """
    folder = Path(folder)
    written = []
    for name in PAGE_FILES:
        shutil.copyfile(PAGE_DIR / name, folder / name)
        written.append(name)
    bundles = find_bundles()
    for name, path in bundles.items():
        shutil.copyfile(path, folder / name)
        written.append(name)
    return written, bundle_versions(bundles)


def has_page(folder: str | Path) -> bool:
    folder = Path(folder)
    return all((folder / name).is_file() for name in (*PAGE_FILES, *BUNDLES))
