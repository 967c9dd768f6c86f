"""The gateway's logs: one event per line, as JSON (for log stores) or text (for terminals).

Every record may carry fields besides its message (``event``): those the code passes as
``extra`` (``job_id``, ``slurm_job_id``, ``from_state``, ``to_state``, ``reason``, ...) and those
of the request being served (``request_id``, ``user``), which the API's middleware puts in a
context variable for the request's duration (:func:`log_context`). The access log is one such
event per request (``gateway.api.requestlog``): method, path, status, bytes, seconds.

Nothing secret is logged: tokens travel in headers and bodies, which are never logged, and a
query parameter whose name looks like a credential is masked in logged paths.
"""

from __future__ import annotations

import json
import logging
import re
import sys
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
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS
            if getattr(record, name, None) is not None}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, the fields, and ``error`` (the
    traceback) when an exception is logged."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": format_timestamp(record.created),
                                 "level": record.levelname.lower(), "logger": record.name,
                                 "event": record.getMessage(), **_fields(record)}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The message, then the fields as ``name=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{name}={value}" for name, value in _fields(record).items())
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        return f"{head} [{fields}]{newline}{rest}"


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
