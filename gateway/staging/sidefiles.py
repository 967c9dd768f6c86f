"""Side files: extra files a notebook run brings along (a helper module, a small CSV).

They land next to the notebook in the job's work directory, so the notebook opens them by
their plain name. A name is one path component of ``[A-Za-z0-9._-]`` (at most 128 characters,
not starting with a dot, so no ``..`` and no hidden file), not one of the files the gateway
itself puts or expects there, and not sent twice. At most :data:`MAX_SIDE_FILES` files.
"""

from __future__ import annotations

import re

from ..errors import FieldError

MAX_SIDE_FILES = 64
NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")
# What the gateway stages into, or reads back from, a job's work directory (job_templates/,
# jobside/): a side file must never replace or pose as one of them.
RESERVED = frozenset({
    "input.ipynb", "output.ipynb", "parameters.json", "runner.py", "exit.json", "job.log",
    "job.sh", "lab.py", "lab.token", "lab.json", "runtime", "files", "exit.json.part",
    "lab.json.part", "progress.json", "progress.json.part",
})
# Where the gateway keeps a job's side files in its data directory (beside input.ipynb).
SIDE_DIR = "files"


def side_file_errors(names: list[str]) -> list[FieldError]:
    """Every problem with the side files' ``names`` (in upload order), as 422 field errors."""
    errors: list[FieldError] = []
    if len(names) > MAX_SIDE_FILES:
        errors.append(FieldError("file", f"at most {MAX_SIDE_FILES} side files"))
    seen: set[str] = set()
    for name in names:
        shown = repr(name)[:80]
        if not NAME.match(name):
            errors.append(FieldError(f"file {shown}", "a side file's name is one plain file "
                                     "name of letters, digits, '.', '_', '-' (not starting "
                                     "with '.')"))
        elif name in RESERVED:
            errors.append(FieldError(f"file {shown}", "the gateway uses this name itself"))
        elif name in seen:
            errors.append(FieldError(f"file {shown}", "sent more than once"))
        seen.add(name)
    return errors
