"""An executed notebook as an HTML page (``GET /jobs/{id}/notebook.html``), rendered on the
gateway by a small renderer of its own over the notebook's JSON, never by the notebook.

Nothing a notebook holds becomes markup of its own: cell sources, text outputs and tracebacks
are shown as text (jinja2 autoescape); markdown cells are rendered by markdown-it-py in
CommonMark mode with raw HTML off (what a cell holds as HTML is shown as text) and its link
check (no ``javascript:``, ``vbscript:``, ``file:`` or non-image ``data:`` URLs);
``text/html``, JavaScript and widget outputs are not
rendered (their ``text/plain`` form is shown instead, or a note); PNG, JPEG and GIF images
become ``data:`` URLs after a strict base64 check. The page is also served with a CSP that
sandboxes it (``sandbox`` without ``allow-scripts`` or ``allow-same-origin``: an opaque
origin, no script) and allows no source but its own style block and ``data:`` images, so
markup missed here still could not run script or reach the gateway's origin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup

from .. import untrusted
from .views import render

# raw HTML off: a cell's <script> or <img onerror> is text; markdown-it's validateLink refuses
# javascript:, vbscript:, file: and data: links other than images.
_MARKDOWN = MarkdownIt("commonmark", {"html": False})

MAX_RENDERED_BYTES = 32 * 1024 * 1024  # a notebook bigger than this is offered for download only
MAX_TEXT = 200_000  # characters of one output shown; the rest is cut with a note
# Characters of markdown rendered per page (markdown-it-py takes up to ~10 µs a character on
# pathological input); cells past it are shown as text.
MARKDOWN_BUDGET = 100_000
# What one page shows at most: cells and outputs together, and characters of their text (a
# notebook of empty cells made 26 bytes of HTML per byte, and 10 GiB of memory at 32 MiB).
# Past either, the rest is left out with a note.
MAX_SHOWN = 5_000
PAGE_TEXT_BUDGET = 16 * 1024 * 1024
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}\Z")
STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:0;padding:.5rem;color:#1b1b1b}
h1{font-size:1.1rem;margin:.2rem 0}
.cell{border-left:3px solid #ccd;margin:.6rem 0;padding:.2rem .6rem}
.md{border-left-color:#9ad}
pre{white-space:pre-wrap;word-break:break-word;margin:.3rem 0;font:13px/1.4 monospace}
.src{background:#f4f5f7;padding:.4rem}.count{color:#555;font:12px monospace}
.stderr{background:#fff0f0}.error{background:#fde2e2;color:#7a0000}
.note{color:#555;font-style:italic}img{max-width:100%}"""
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (f"sandbox; default-src 'none'; style-src '{STYLE_HASH}'; img-src data:; "
       "frame-ancestors 'self'; base-uri 'none'; form-action 'none'")


def _joined(value: Any) -> str:
    """A notebook's multi-line string: a string, or a list whose strings are joined (anything
    else in it, which no notebook writer puts there, is left out)."""
    if isinstance(value, list):
        return "".join(part for part in value if isinstance(part, str))
    return str(value or "")


def _text(value: Any) -> str:
    """A notebook's multi-line string (a string or a list of strings), ANSI colours removed,
    at most :data:`MAX_TEXT` characters."""
    text = _joined(value)
    text = _ANSI.sub("", text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "\n… (cut)"


def _image(kind: str, data: Any) -> str | None:
    """A ``data:`` URL for base64 image ``data``, or None if it is not clean base64."""
    raw = "".join(_joined(data).split())
    if not raw or not _BASE64.match(raw):
        return None
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return f"data:{kind};base64,{raw}"


def _output(output: dict[str, Any]) -> dict[str, str]:
    """One output as ``{"kind": ..., "text"|"src": ...}`` for the template."""
    kind = output.get("output_type")
    if kind == "stream":
        name = "stderr" if output.get("name") == "stderr" else "stdout"
        return {"kind": name, "text": _text(output.get("text"))}
    if kind == "error":
        trace = _text(output.get("traceback")) if output.get("traceback") else ""
        head = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
        return {"kind": "error", "text": trace or head}
    data = output.get("data") if isinstance(output.get("data"), dict) else {}
    assert isinstance(data, dict)
    for image in IMAGE_TYPES:
        if image in data:
            src = _image(image, data[image])
            if src is not None:
                return {"kind": "image", "src": src}
    if "text/plain" in data:
        return {"kind": "stdout", "text": _text(data["text/plain"])}
    return {"kind": "note", "text": "(an output of type "
            f"{', '.join(sorted(map(str, data))) or 'unknown'} is not shown here; download the "
            "notebook to see it)"}


def notebook_cells(notebook: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of a v4 notebook (parsed JSON) as the template shows them; anything that
    does not have the expected shape is skipped or shown as text. At most :data:`MAX_SHOWN`
    cells and outputs together, and about :data:`PAGE_TEXT_BUDGET` characters of their text:
    past either, the rest is left out and a last cell says so."""
    cells = notebook.get("cells") if isinstance(notebook.get("cells"), list) else []
    shown: list[dict[str, Any]] = []
    budget, room = MARKDOWN_BUDGET, _Room(MAX_SHOWN, PAGE_TEXT_BUDGET)
    for cell in cells or []:
        if not isinstance(cell, dict):
            continue
        if room.full:
            shown.append(_CUT)
            break
        outputs = cell.get("outputs") if isinstance(cell.get("outputs"), list) else []
        source = room.took(_text(cell.get("source")))
        html = None
        if cell.get("cell_type") == "markdown" and len(source) <= budget:
            budget -= len(source)
            html = Markup(_MARKDOWN.render(source))  # noqa: S704 - raw HTML off, see above
        dicts = [o for o in outputs or [] if isinstance(o, dict)]
        shown_outputs: list[dict[str, str]] = []
        while len(shown_outputs) < len(dicts) and not room.full:
            shown_outputs.append(one := _output(dicts[len(shown_outputs)]))
            room.took(one.get("text") or one.get("src") or "")
        shown.append({
            "type": "markdown" if cell.get("cell_type") == "markdown" else "code"
            if cell.get("cell_type") == "code" else "raw",
            "source": source,
            "html": html,
            "count": cell.get("execution_count") if isinstance(
                cell.get("execution_count"), int) else None,
            "outputs": shown_outputs,
        })
        if len(shown_outputs) < len(dicts):
            shown.append(_CUT)
            break
    return shown


class _Room:
    """What is left of one page: items (cells and outputs) and characters of text."""

    def __init__(self, items: int, characters: int) -> None:
        self.items, self.characters = items, characters

    @property
    def full(self) -> bool:
        return self.items <= 0 or self.characters <= 0

    def took(self, text: str) -> str:
        """One more item of ``text`` shown; ``text``, for the caller's convenience."""
        self.items -= 1
        self.characters -= len(text)
        return text


# The last cell shown when a page is cut short.
_CUT: dict[str, Any] = {
    "type": "raw", "html": None, "count": None, "outputs": [],
    "source": "… the rest of the notebook is not shown here (too many cells, outputs or "
              "characters for one page); download the notebook to see it whole."}


def rendered_page(path: Path, title: str) -> str:
    """:func:`render_notebook`'s page, kept beside the notebook (``output.html``) and reused
    while the notebook is not newer: an ended job's notebook does not change, so it is
    rendered once, not on every view."""
    cached = cached_page(path)
    if cached is not None:
        return cached
    cache = path.with_name("output.html")
    html = render_notebook(path, title)
    partial = cache.with_name(f".output.html.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(html)
    partial.replace(cache)
    return html


def cached_page(path: Path) -> str | None:
    """The page :func:`rendered_page` kept for the notebook at ``path``, if it is not older
    than the notebook; None otherwise."""
    cache = path.with_name("output.html")
    try:
        if cache.stat().st_mtime_ns >= path.stat().st_mtime_ns:
            return cache.read_text()
    except FileNotFoundError:
        pass
    return None


def render_notebook(path: Path, title: str) -> str:
    """The page for the notebook at ``path``; a short page saying why when it is too big or
    not a notebook's JSON."""
    if path.stat().st_size > MAX_RENDERED_BYTES:
        return too_big_page(title)
    try:
        notebook = untrusted.loads(path.read_bytes())
    except ValueError:
        notebook = None
    if not isinstance(notebook, dict):
        return render("notebook.html", title=title, style=STYLE, cells=[],
                      problem="The executed notebook could not be read.")
    return render("notebook.html", title=title, style=STYLE, cells=notebook_cells(notebook),
                  problem="")


def too_big_page(title: str) -> str:
    """The page for a notebook too big to show (over :data:`MAX_RENDERED_BYTES`, or past
    what the renderer may spend on one: :mod:`gateway.offload`)."""
    return render("notebook.html", title=title, style=STYLE, cells=[],
                  problem="The notebook is too big to show here; download it instead.")
