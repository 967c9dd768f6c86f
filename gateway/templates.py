"""Rendering batch scripts from the job templates (``gateway/job_templates/``, package data).

The built-in templates can be overridden by name from a site directory (``[gateway]
template_dir``): :func:`make_environment` looks there first and falls back to the built-in ones,
so a site's ``lab.sh.j2`` may replace only that template and still ``{% extends "base.sh.j2" %}``
(or extend the built-in version of itself as ``builtin/lab.sh.j2``).

The scripts carry no scheduler options (those travel as
:class:`gateway.scheduler.options.SubmitOptions`). Quoting is the filters' job, so a template
cannot get it wrong silently:

- ``q`` quotes free text for bash. Printable text becomes one ``shlex.quote`` word; text with
  control characters becomes an ANSI-C ``$'...'`` word, so a newline in a value can never start a
  new line of the script. A :class:`ShellVariable` word (made in a template with
  ``shell_var(NAME, prefix)``) is its quoted prefix followed by ``"$NAME"``, and only names in
  :data:`SHELL_VARIABLES` can be one: the job's own variables, never text from a request. A
  :class:`ShellArray` word is ``"${NAME[@]}"``: the words of one of :data:`SHELL_ARRAYS`, the
  arrays the script itself fills (the environment a container starts with).
- ``words`` quotes a host command's argv (a list of text) word by word, as ``in_runtime`` does
  without a runtime (the SSHFS mounts: they are made on the node, outside any container).
- ``in_runtime`` hands a command's argv to the job's container runtime (the ``runtime`` in the
  render context, a :class:`gateway.runtimes.base.ContainerRuntime`) and renders the argv it
  returns as one command line, every word through ``q``.

Anything else printed by ``{{ ... }}`` must be a string or a number: a list or an object can't
land in a script as its Python repr. ``StrictUndefined`` turns a misspelt variable into an error
instead of an empty string.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .errors import GatewayError

# Where the built-in templates live, as package data of this package.
BUILTIN_PACKAGE, BUILTIN_DIR = "gateway", "job_templates"
# The prefix under which a site template can reach a built-in one it overrides.
BUILTIN_PREFIX = "builtin"
# The shell variables a script may pass to its command unexpanded by the gateway: set by the
# script itself (JUPYTER_RUNTIME_DIR) or for the job's user by sudo, sshd and Slurm (HOME, USER,
# PATH).
SHELL_VARIABLES = frozenset({"HOME", "USER", "PATH", "JUPYTER_RUNTIME_DIR"})
# The bash arrays a command may take whole words from, each filled by the script itself.
SHELL_ARRAYS = frozenset({"hpcgw_env"})
_ANSI_C = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SHELL_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
# Continuation lines of a long command start with this; a line is broken before an option word
# once it would pass COMMAND_WIDTH characters.
COMMAND_WIDTH = 90
_CONTINUATION = " \\\n    "
# Where a continuation line may start: an option, an assignment, an array's words.
_STARTS_GROUP = re.compile(r'-|[A-Za-z_][A-Za-z0-9_]*=|"\$\{')


class TemplateValueError(ValueError):
    """A value that is not safe where the template put it."""


class ScriptRenderError(GatewayError):
    """A job script could not be rendered (an unsafe value, or a broken admin template)."""

    type_slug = "script-render"
    title = "Job script could not be rendered"


@dataclass(frozen=True)
class ShellVariable:
    """One command word: ``prefix`` (literal text) followed by the value shell variable ``name``
    has when the script runs, e.g. ``--ServerApp.root_dir="$HOME"``.

    ``name`` must be in :data:`SHELL_VARIABLES` (else :class:`TemplateValueError`); the value is
    double-quoted, so it is neither split nor globbed.
    """

    name: str
    prefix: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and _SHELL_NAME.match(self.name)
                and self.name in SHELL_VARIABLES):
            raise TemplateValueError(
                f"shell variable {self.name!r} is not one a script may pass on "
                f"(allowed: {', '.join(sorted(SHELL_VARIABLES))})")
        if not isinstance(self.prefix, str):
            raise TemplateValueError(f"the prefix of ${self.name} must be text")


@dataclass(frozen=True)
class ShellArray:
    """Any number of command words: the elements of the bash array ``name`` when the script
    runs (``"${name[@]}"``), each one word. ``name`` must be in :data:`SHELL_ARRAYS`."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in SHELL_ARRAYS:
            raise TemplateValueError(f"shell array {self.name!r} is not one a script may pass "
                                     f"on (allowed: {', '.join(sorted(SHELL_ARRAYS))})")


# A word of a command's argv: literal text, or a reference to one of the script's variables
# (or to an array of words the script holds).
Word = str | ShellVariable | ShellArray


def shell_quote(value: Any) -> str:
    """One bash word that expands to exactly ``str(value)`` (for a :class:`ShellVariable`: to its
    prefix followed by the variable's value)."""
    if isinstance(value, ShellVariable):
        if value.name not in SHELL_VARIABLES:  # frozen, but checked where it counts
            raise TemplateValueError(f"shell variable {value.name!r} is not allowed")
        return (shell_quote(value.prefix) if value.prefix else "") + f'"${value.name}"'
    if isinstance(value, ShellArray):
        if value.name not in SHELL_ARRAYS:
            raise TemplateValueError(f"shell array {value.name!r} is not allowed")
        return f'"${{{value.name}[@]}}"'
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


def shell_words(words: Iterable[Word]) -> str:
    """``words`` as one bash command line, each quoted by :func:`shell_quote`. A line longer
    than :data:`COMMAND_WIDTH` is continued (backslash, newline, indent) before an option word
    (one starting with ``-``), an ``env`` assignment (``NAME=...``) or an array's words, so an
    option stays on the line of its values. No word ever holds a raw newline, so the line
    breaks are only these."""
    groups: list[str] = []  # an option (or assignment) with the words up to the next one
    for text in map(shell_quote, words):
        if groups and not _STARTS_GROUP.match(text):
            groups[-1] += " " + text
        else:
            groups.append(text)
    lines = [groups[0]] if groups else []
    for group in groups[1:]:
        indent = 4 if len(lines) > 1 else 0
        if indent + len(lines[-1]) + 1 + len(group) > COMMAND_WIDTH:
            lines.append(group)
        else:
            lines[-1] += " " + group
    return _CONTINUATION.join(lines)


@jinja2.pass_context
def in_runtime(context: jinja2.runtime.Context, argv: Sequence[Word]) -> str:
    """The ``in_runtime`` filter: ``argv`` (text, whole numbers and :class:`ShellVariable`
    words) as the context's container runtime runs it for the context's ``container`` (a
    :class:`gateway.runtimes.base.ContainerJob`), quoted word by word (:func:`shell_words`)."""
    runtime, container = context.get("runtime"), context.get("container")
    if runtime is None:
        raise TemplateValueError("no container runtime in the render context")
    if isinstance(argv, str | jinja2.Undefined):
        raise TemplateValueError("in_runtime takes a list of words")
    command: list[Word] = []
    for word in argv:
        if isinstance(word, jinja2.Undefined):
            str(word)  # StrictUndefined: raises UndefinedError naming the variable
        if isinstance(word, int) and not isinstance(word, bool):
            word = str(word)
        if not isinstance(word, str | ShellVariable):
            raise TemplateValueError(f"in_runtime: {type(word).__name__} is not a word")
        command.append(word)
    if container is None:
        raise TemplateValueError("no container job in the render context")
    words = runtime.exec_argv(container, command)
    if not words or not all(isinstance(w, str | ShellVariable | ShellArray) for w in words):
        raise TemplateValueError(f"runtime {runtime.name!r} returned no argv of words")
    return shell_words(words)


def host_words(argv: Sequence[str]) -> str:
    """The ``words`` filter: a command run on the host itself (not in the job's container),
    a list of text words, quoted word by word."""
    if isinstance(argv, str) or not all(isinstance(word, str) for word in argv):
        raise TemplateValueError("words takes a list of text words")
    return shell_words(argv)


def _printable(value: Any) -> Any:
    """Jinja's ``finalize``: what ``{{ ... }}`` may print as it is (text and numbers)."""
    if isinstance(value, str | int | float):
        return value
    raise TemplateValueError(
        f"{type(value).__name__} values can't be printed into a script; quote text with q")


def _loader(template_dir: Path | None) -> jinja2.BaseLoader:
    builtin = jinja2.PackageLoader(BUILTIN_PACKAGE, BUILTIN_DIR)
    site = [jinja2.FileSystemLoader(str(template_dir))] if template_dir is not None else []
    return jinja2.ChoiceLoader([jinja2.PrefixLoader({BUILTIN_PREFIX: builtin}), *site, builtin])


def make_environment(template_dir: Path | None = None) -> jinja2.Environment:
    """The jinja2 environment job scripts are rendered with: templates from ``template_dir``
    (the site's, may be None) first, then the built-in ones; the filters ``q`` and
    ``in_runtime`` and the global ``shell_var``. A missing site directory is not an error here
    (``hpcgw check-config`` reports it): its templates are then the built-in ones."""
    environment = jinja2.Environment(
        loader=_loader(template_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - shell scripts, not HTML; quoting is the filters' job
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_printable,
    )
    environment.filters["q"] = shell_quote
    environment.filters["in_runtime"] = in_runtime
    environment.filters["words"] = host_words
    environment.globals["shell_var"] = ShellVariable
    return environment


def builtin_templates() -> list[str]:
    """The names of the built-in templates (``base.sh.j2``, ``lab.sh.j2``, ...)."""
    return sorted(jinja2.PackageLoader(BUILTIN_PACKAGE, BUILTIN_DIR).list_templates())


def template_problems(template_dir: Path | None) -> list[str]:
    """What ``hpcgw check-config`` reports about the job templates: a site ``template_dir``
    that is not a directory, and every template name that does not load (parse) from where
    :func:`make_environment` finds it. Empty when all is well."""
    problems = []
    if template_dir is not None and not template_dir.is_dir():
        problems.append(f"gateway.template_dir {template_dir} is not a directory")
    environment = make_environment(template_dir)
    for name in builtin_templates():
        try:
            environment.get_template(name)
        except (jinja2.TemplateError, OSError, UnicodeError) as exc:
            problems.append(f"job template {name}: {exc}")
    return problems


def render(environment: jinja2.Environment, template: str, **context: Any) -> str:
    """The rendered template; any failure (unsafe value, undefined name, template syntax, a
    missing or unreadable file) raises ScriptRenderError, so the job fails instead of
    hanging."""
    try:
        return environment.get_template(template).render(**context)
    except (TemplateValueError, jinja2.TemplateError, OSError, UnicodeError) as exc:
        raise ScriptRenderError(f"{template}: {exc}") from exc
