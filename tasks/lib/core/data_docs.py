"""GX data docs that open offline and are the same bytes for the same data.

GX's page templates load bootstrap, jquery, bootstrap-table, the icon font and more from CDNs
(offline: unstyled tables, no icons), and each page carries random element ids and a
timestamped logo address, so a rerun on unchanged inputs would change the folder DVC hashes.
Here the vendored copies (`data_docs_assets/`, written by scripts/vendor_web_assets.sh) are
copied into the site and every page points at them; the random ids become counters. The run
time in the pages is fixed by the caller (the validation run identifier).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

DATA_DOCS_ASSETS = Path(__file__).with_name("data_docs_assets")
STATIC, VENDOR = "static", "vendor"  # GX's static/ folder in the site; the copies go inside it

CDN_ASSETS = {  # each address GX's templates load (great_expectations/render/view/templates)
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap/dist/css/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap/dist/js/bootstrap.min.js"
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": (
        "popper.js/dist/umd/popper.min.js"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "fontawesome-free/css/all.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table/dist/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "bootstrap-table/dist/bootstrap-table.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (  # noqa: E501
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    # the pages mix 1.19.0 and 1.19.1 filter-control sheets: the 1.19.1 one serves both
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": (  # noqa: E501
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (  # noqa: E501
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (  # noqa: E501
        "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (  # noqa: E501
        "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (  # noqa: E501
        "bootstrap-dark/dist/css/bootstrap-prefers-dark.min.css"
    ),
}
# vega draws GX's profiling charts; no page of a validation run has one, so its tags go
_CHART_SCRIPT = re.compile(
    r'<script src="https://cdn\.jsdelivr\.net/npm/vega[-a-z]*@\d+"></script>\n?'
)
# the CDN's integrity hashes: a local copy needs none, and `crossorigin` fails on file:// pages
_INTEGRITY = re.compile(r'\s+integrity="[^"]*"\s+crossorigin="anonymous"')
# GX ships this logo in static/images; the remote copy's address carries the render time
_LOGO = re.compile(r"https://great-expectations-web-assets\.[^\"']*/logo-long\.png\?d=[^\"']*")
# GX's own static/ links: its validation pages miss a folder level (a broken favicon)
_STATIC_LINK = re.compile(r'(?<=")(?:\.\.?/)+static/')
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def offline_page(text: str, static: str) -> str:
    """A data docs page with local assets and counters for its random element ids.

    `static` is the site's static/ folder relative to the page (pages sit at several depths).
    """
    text = _INTEGRITY.sub("", _CHART_SCRIPT.sub("", text))
    for address, vendored in CDN_ASSETS.items():
        text = text.replace(f'"{address}"', f'"{static}/{VENDOR}/{vendored}"')
    text = _STATIC_LINK.sub(f"{static}/", text)
    text = _LOGO.sub(f"{static}/images/logo-long.png", text)
    ids: dict[str, str] = {}
    return _UUID.sub(lambda m: ids.setdefault(m.group(), f"element-{len(ids)}"), text)


def make_offline(docs_dir: Path) -> None:
    """Copy the vendored assets into the data docs folder and point every page at them."""
    shutil.copytree(DATA_DOCS_ASSETS, docs_dir / STATIC / VENDOR, dirs_exist_ok=True)
    for page in docs_dir.rglob("*.html"):
        static = Path(os.path.relpath(docs_dir / STATIC, page.parent)).as_posix()
        page.write_text(offline_page(page.read_text("utf-8"), static), "utf-8")
