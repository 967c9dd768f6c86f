"""Rendering batch scripts from ``job_templates/`` (admin-overridable jinja2 files).

Two filters carry all the quoting, so a template cannot get it wrong silently:

- ``q`` quotes free text for bash. Printable text becomes one ``shlex.quote`` word; text with
  control characters becomes an ANSI-C ``$'...'`` word, so a newline in a value can never start a
  new line of the script (and so never an ``#SBATCH`` line).
- ``sbatch`` passes a value into an ``#SBATCH`` directive only if it is made of characters Slurm
  needs no quoting for; anything else raises. Values there come from allowlists anyway: this is
  the second lock on the same door.

``StrictUndefined`` turns a misspelt variable into an error instead of an empty string.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import jinja2

from .errors import GatewayError

DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "job_templates"
_SBATCH_SAFE = re.compile(r"[A-Za-z0-9._:/@+=,%-]+")
_ANSI_C = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class TemplateValueError(ValueError):
    """A value that is not safe where the template put it."""


class ScriptRenderError(GatewayError):
    """A job script could not be rendered (an unsafe value, or a broken admin template)."""

    type_slug = "script-render"
    title = "Job script could not be rendered"


def shell_quote(value: Any) -> str:
    """One bash word that expands to exactly ``str(value)``."""
    text = str(value)
    if text.isprintable():
        return shlex.quote(text)
    # Non-printable characters become their UTF-8 bytes as \xHH, which bash decodes the same
    # in every locale (\uXXXX needs a UTF-8 one).
    escaped = "".join(
        _ANSI_C.get(c) or (c if c.isprintable() else "".join(
            f"\\x{byte:02x}" for byte in c.encode("utf-8", "surrogatepass")))
        for c in text
    )
    return f"$'{escaped}'"


def sbatch_value(value: Any) -> str:
    """``value`` for an ``#SBATCH`` line, or TemplateValueError if it needs quoting."""
    text = str(value)
    if not _SBATCH_SAFE.fullmatch(text):
        raise TemplateValueError(f"unsafe value for an #SBATCH directive: {text!r}")
    return text


def make_environment(template_dir: Path = DEFAULT_TEMPLATE_DIR) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - shell scripts, not HTML; quoting is the filters' job
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["q"] = shell_quote
    environment.filters["sbatch"] = sbatch_value
    return environment


def render(environment: jinja2.Environment, template: str, **context: Any) -> str:
    """The rendered template; any failure (unsafe value, undefined name, template syntax, a
    missing file) raises ScriptRenderError, so the job fails instead of hanging."""
    try:
        return environment.get_template(template).render(**context)
    except (TemplateValueError, jinja2.TemplateError) as exc:
        raise ScriptRenderError(f"{template}: {exc}") from exc
