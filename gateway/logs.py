"""The gateway's logs: one event per line, as JSON (for log stores) or text (for terminals).

Every record may carry fields besides its message (``event``): those the code passes as
``extra`` (``job_id``, ``slurm_job_id``, ``from_state``, ``to_state``, ``reason``, ...) and those
of the request being served (``request_id``, ``user``), which the API's middleware puts in a
context variable for the request's duration (:func:`log_context`). The access log is one such
event per request (``gateway.api.requestlog``): method, path, status, bytes, seconds.

Nothing secret is logged: tokens travel in headers and bodies, which are never logged, and a
query parameter whose name looks like a credential is masked in logged paths.

Messages and fields often quote what a job or a client wrote (a stager's answer, a command's
stderr, a path), so neither format writes that text raw: a JSON line is ASCII (any other
character is a ``\\uXXXX`` escape, which a reader decodes back exactly), and the text format
escapes control and other invisible characters (:func:`escape_controls`). A job's owner can thus
neither retitle nor clear the admin's terminal, nor start a line that looks like a record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from .timestamps import format_timestamp

# The fields an event may carry besides its message, in the order they are written.
FIELDS = ("request_id", "user", "method", "path", "status", "bytes", "seconds", "remote",
          "job_id", "slurm_job_id", "cluster", "from_state", "to_state", "reason",
          "attempt", "outcome", "webhook", "requests")
LogFormat = Literal["json", "text"]
# (name, value) pairs: immutable, so a task started inside a context can't change its parent's.
_CONTEXT: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("hpcgw_log_context",
                                                               default=())
_CREDENTIAL = re.compile(r"(?i)(token|secret|password|key|code|state)")
# How a traceback's lines start in the text format: never where a record starts.
TRACEBACK_INDENT = "    "
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the ``with`` (in this task and those it
    starts)."""
    token = _CONTEXT.set(tuple({**dict(_CONTEXT.get()), **fields}.items()))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class _ContextFilter(logging.Filter):
    """Copies the current :func:`log_context` fields onto each record (``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _CONTEXT.get():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def escape_controls(text: str) -> str:
    """``text`` safe to write on a terminal as part of one log line.

    Every character of Unicode category C (controls such as ESC, BEL, newline, tab and the C1
    range with U+009B, an 8-bit CSI; format characters such as bidi overrides; lone surrogates;
    private-use and unassigned code points), and the line and paragraph separators U+2028 and
    U+2029, becomes a visible escape: ``\\n``, ``\\r``, ``\\t``, else ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``. Everything else is kept as it is: printable text in any script (``José``),
    spaces of category Zs, and backslashes (so an escape is not told apart from the same text
    written literally; the JSON format is the lossless one). Text that is all printable, as
    nearly all is, is returned unchanged at the cost of one ``str.isprintable``.
    """
    if text.isprintable():  # False for every character escaped below (and for Zs but " ")
        return text
    return "".join(char if char.isprintable() or not _needs_escape(char) else _escape(char)
                   for char in text)


def _needs_escape(char: str) -> bool:
    return unicodedata.category(char)[0] == "C" or char in "\u2028\u2029"


def _escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS
            if getattr(record, name, None) is not None}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, the fields, and ``error`` (the
    traceback) when an exception is logged.

    The line is ASCII: every control character, every non-ASCII one (C1 controls, U+2028/2029,
    lone surrogates, and also ``é``) is a JSON escape, so a reader gets each string back exactly
    and no terminal or line-based tool sees a raw control character or a line break."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": format_timestamp(record.created),
                                 "level": record.levelname.lower(), "logger": record.name,
                                 "event": record.getMessage(), **_fields(record)}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then the fields as ``name=value`` (a list or dict as
    Python writes it), on one line passed through :func:`escape_controls`: a newline in a
    message or a field is ``\\n``, never a line of its own. A traceback (or stack) follows on
    lines of its own, each escaped the same way and indented by :data:`TRACEBACK_INDENT`, so
    that a line an exception's message brings along never starts where a record starts."""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{self.formatTime(record, self.datefmt)} {record.levelname} {record.name}: "
                f"{record.getMessage()}")
        fields = " ".join(f"{name}={value}" for name, value in _fields(record).items())
        if fields:
            line = f"{line} [{fields}]"
        details = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            details.append(record.exc_text)
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        below = "".join(f"\n{TRACEBACK_INDENT}{escape_controls(part)}"
                        for detail in details for part in detail.split("\n"))
        return f"{escape_controls(line)}{below}"


def configure(level: str = "info", log_format: LogFormat | None = None,
              stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) in ``log_format``: JSON unless the
    stream is a terminal."""
    stream = stream or sys.stderr
    if log_format is None:
        log_format = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def masked_path(path_qs: str) -> str:
    """``path_qs`` with the values of credential-like query parameters replaced by ``***``."""
    path, question, query = path_qs.partition("?")
    if not question:
        return path
    parts = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        parts.append(f"{name}=***" if equals and _CREDENTIAL.search(name) else pair)
    return f"{path}?{'&'.join(parts)}"
