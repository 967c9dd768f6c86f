"""What an uploaded notebook becomes before it is stored: checked and upgraded to nbformat v4,
a name for its job from its file name, and a warning when its parameters have no cell to
replace. Pure functions of the upload (the job service calls them while validating a run)."""

from __future__ import annotations

import json
import warnings
from typing import Any

import nbformat


def upgraded_notebook(notebook: bytes) -> bytes:
    """``notebook`` as it will run: checked against its nbformat schema (the error raised as
    nbformat words it), and an older format (v3) upgraded to v4; a v4 notebook is kept byte
    for byte."""
    with warnings.catch_warnings():  # nbformat warns about missing cell ids; fine
        warnings.simplefilter("ignore")
        original = nbformat.reads(notebook.decode("utf-8"), as_version=nbformat.NO_CONVERT)  # type: ignore[no-untyped-call]
        nbformat.validate(original)
        if original.nbformat >= 4:
            return notebook
        upgraded = nbformat.v4.upgrade(original)  # type: ignore[no-untyped-call]
        nbformat.validate(upgraded)
        text: str = nbformat.writes(upgraded)  # type: ignore[no-untyped-call]
        return text.encode()


NO_PARAMETERS_CELL = (
    "warning: the notebook has no cell tagged 'parameters', so its parameters go in a cell of "
    "their own at the top (papermill's way); tag the cell that sets their defaults "
    "'parameters' to have them replace those")


def parameters_warning(notebook: bytes, parameters: dict[str, Any]) -> str | None:
    """:data:`NO_PARAMETERS_CELL` when ``parameters`` are given and no code cell of
    ``notebook`` (checked, v4) is tagged ``parameters``; None otherwise."""
    if not parameters:
        return None
    cells = json.loads(notebook).get("cells", [])
    tagged = any(cell.get("cell_type") == "code"
                 and "parameters" in cell.get("metadata", {}).get("tags", [])
                 for cell in cells)
    return None if tagged else NO_PARAMETERS_CELL


def name_of_file(filename: str | None) -> str:
    """A job name from an uploaded notebook's file name: its last path part without
    ``.ipynb``; ``notebook`` when that leaves nothing printable."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".ipynb")[:256]
    if not name.strip() or not name.isprintable():
        return "notebook"
    return name
