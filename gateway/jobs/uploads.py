"""What an uploaded notebook becomes before it is stored: checked and upgraded to nbformat v4,
a name for its job from its file name, and a warning when its parameters have no cell to
replace. Functions of the upload (the job service calls them while validating a run).

Parsing and checking a notebook against its schema is pure Python or one long C call (a third of
a second per MiB of small cells, more for a notebook of nested lists), so :class:`NotebookChecks`
runs it off the event loop (:class:`gateway.offload.Offload`: a big one in a process of its own),
users taking turns, and at most :data:`MAX_CHECKS_PER_USER` of a user's waiting or checked:
the event loop that serves everyone keeps turning, and one user's uploads wait their turn
behind other users' instead of taking the checker over.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import nbformat
import nbformat.reader

from ..errors import TooManyRequests
from ..offload import Offload
from .limits import PerUserCount

# A burst of parallel submissions is fine (they wait their turn, users in turn); past this
# many of a user's waiting or checked, 429.
MAX_CHECKS_PER_USER = 32


class NotebookChecks:
    """Uploaded notebooks checked off the event loop, in turn (see the module's account)."""

    def __init__(self, offload: Offload, per_user: int = MAX_CHECKS_PER_USER) -> None:
        self._offload = offload
        self._users = PerUserCount(per_user)

    async def checked(self, user_id: int, notebook: bytes,
                      parameters: dict[str, Any]) -> tuple[bytes | None, str | None]:
        """:func:`checked_upload` off the loop when its turn comes. :class:`TooManyRequests`
        (429, ``Retry-After: 1``) when ``user_id`` already has :data:`MAX_CHECKS_PER_USER`
        notebooks waiting or checked; :class:`gateway.offload.WorkFailed` for a notebook that
        took the checker too long or too much memory."""
        if not self._users.take(user_id):
            raise TooManyRequests(
                f"at most {self._users.limit} notebook uploads at once per user are checked",
                limit="notebook_checks", value=self._users.limit, retry_after=1)
        try:
            return await self._offload.run(len(notebook), checked_upload, notebook, parameters,
                                           owner=user_id)
        finally:
            self._users.give_back(user_id)


def checked_upload(notebook: bytes, parameters: dict[str, Any]
                   ) -> tuple[bytes | None, str | None]:
    """``(the notebook as it will run, a warning or None)`` (:func:`upgraded_notebook`,
    :func:`parameters_warning`), or ``(None, why it is not a valid notebook)``: nbformat's
    errors are not all picklable, so their words travel instead."""
    try:
        checked = upgraded_notebook(notebook)
    except Exception as exc:  # nbformat raises many types for bad input
        return None, str(exc)[:300]
    return checked, parameters_warning(checked, parameters)


def upgraded_notebook(notebook: bytes) -> bytes:
    """``notebook`` as it will run: checked against its nbformat schema (the error raised as
    nbformat words it), and an older format (v3) upgraded to v4; a v4 notebook is kept byte
    for byte. (``nbformat.reader.reads``, not ``nbformat.reads``: the latter checks the schema
    too, only to log what is wrong, which doubled the cost.)"""
    with warnings.catch_warnings():  # nbformat warns about missing cell ids; fine
        warnings.simplefilter("ignore")
        original = nbformat.reader.reads(notebook.decode("utf-8"))  # type: ignore[no-untyped-call]
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
