"""HTTP/1.1 request framing for the reverse proxy: where a request's head and body end.

Pure functions over bytes, no I/O. The proxy reads a client's bytes, asks :func:`head_end`
where the head ends, parses it with :func:`parse_request_head`, and then knows the body's length
(``Content-Length``, none, or a chunked body that :class:`ChunkedScanner` walks without changing a
byte). So pipelined requests can be split at exact byte boundaries and handed to different
servers.

Anything two HTTP implementations could read two ways is refused, since a front end and a back
end that disagree on where a request ends let a client smuggle a request past the front end
(RFC 9112 §6.3, §11.2). A refusal is a :class:`HeadError` with the status to answer and a
detail safe to show the client:

- 400: a request line other than ``METHOD SP target SP HTTP/1.x`` with single spaces (method of
  token characters, target of visible ASCII); a line not ended by CRLF, a bare CR or LF, an
  empty line before the request line; a header line without a colon, with whitespace before the
  colon, a name of other than token characters, or starting with whitespace (obsolete line
  folding); a control character other than HTAB; no ``Host`` in HTTP/1.1, or more than one;
  a ``Content-Length`` of other than 1 to 18 digits (no sign, list or space), or two of them;
  ``Transfer-Encoding`` in HTTP/1.0 or beside ``Content-Length``; malformed chunked framing.
- 431: a head over :data:`MAX_HEAD` bytes or with more than :data:`MAX_HEADERS` header lines.
- 501: a ``Transfer-Encoding`` other than exactly ``chunked``: the proxy cannot tell where any
  other coding's body ends.
- 505: a well-formed ``HTTP/x.y`` other than 1.0 and 1.1 (``PRI * HTTP/2.0``, the HTTP/2
  preface, too); a malformed version is a 400.

Following RFC 9110 (§10.1.1), an HTTP/1.0 request's ``Expect: 100-continue`` is ignored
(``expect_continue`` False). Whether a request is a WebSocket handshake is not decided here but
by the fast path from its headers (:func:`.fastpath.valid_upgrade`), whatever the version, as
aiohttp decides it on the other path (both accept an HTTP/1.0 handshake).

Speed (CPython 3.11, ``timeit``, best of repeats on the 2-core AMD EPYC development machine):
the browser GET head of the unit tests (16 header lines, 794 bytes) parses in about 5.5 us, a
curl-like head of 3 headers in about 2.5 us, and :func:`head_end` finds the end of the first in
about 0.3 us (aiohttp's parsers take about 22 us in Python and 3.7 us in C for the same head
there). :class:`ChunkedScanner` walks a 64 KiB body of eight chunks in about 11 us.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import NoReturn

MAX_HEAD = 64 * 1024
MAX_HEADERS = 128
LAB_TARGET = b"/labs/"  # where every lab's requests go
MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 64 * 1024

_TCHAR = (string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~").encode()
_VCHAR = bytes(range(0x21, 0x7F))
_BAD_CTL = bytes(c for c in range(0x20) if c not in b"\t\r\n") + b"\x7f"
_CTL = _BAD_CTL + b"\r\n"
_NAME_OR_LF = _TCHAR + b"\n"
_NAME = itemgetter(0)
_REQUEST_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([!-~]+) HTTP/1\.([01])")
_HEXDIG = string.hexdigits.encode()
_EXT_CHAR = _VCHAR + b" \t"
_LF = re.compile(b"\n")


class HeadError(Exception):
    """A request the proxy refuses: ``status`` (400, 431, 501 or 505) and ``detail`` (plain
    words, safe to show the client)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(slots=True)
class RequestHead:
    """A request head that framing rules accept. ``target``: the request-target as sent (what
    is served is the caller's choice); ``headers``: every header line in order, names as sent,
    values latin-1 decoded without surrounding SP/HTAB; ``length``: Content-Length, None when
    chunked or absent (no body); ``keep_alive``: HTTP/1.1 unless Connection has "close",
    HTTP/1.0 only with "keep-alive"; ``connection``: the lower-cased tokens of every Connection
    header."""

    method: str
    target: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]
    length: int | None
    chunked: bool
    keep_alive: bool
    connection: frozenset[str]
    expect_continue: bool


def head_end(buffer: bytes | bytearray, start: int = 0, *, searched: int = 0) -> int:
    """Index just past the b"\\r\\n\\r\\n" that ends the head beginning at ``start``, or -1 if it
    has not all arrived; HeadError(431) once more than MAX_HEAD bytes from ``start`` hold no end.

    ``searched``: how many bytes from ``start`` an earlier call already searched in vain (the
    ``len(buffer) - start`` of the call that returned -1); the search resumes just before them,
    so a head that trickles in a byte at a time costs linear, not quadratic, time.
    """
    limit = start + MAX_HEAD
    end = buffer.find(b"\r\n\r\n", start + max(searched - 3, 0), limit)
    if end >= 0:
        return end + 4
    if len(buffer) >= limit:
        raise HeadError(431, f"the request head is longer than {MAX_HEAD} bytes")
    return -1


def parse_request_head(raw: bytes) -> RequestHead:
    """``raw``: the head, from the request line up to and including the blank line."""
    if len(raw) > MAX_HEAD:
        raise HeadError(431, f"the request head is longer than {MAX_HEAD} bytes")
    if not raw.endswith(b"\r\n\r\n"):
        raise HeadError(400, "the request head does not end with an empty line (CRLF CRLF)")
    lines = raw.count(b"\r\n")
    if len(raw.translate(None, _CTL)) != len(raw) - 2 * lines:
        _refuse_controls(raw)
    if lines - 2 > MAX_HEADERS:
        raise HeadError(431, f"the request has more than {MAX_HEADERS} header lines")
    text = raw.decode("latin-1")
    line_end = text.find("\r\n")
    request_line = _REQUEST_LINE.fullmatch(text, 0, line_end)
    if request_line is None:
        _refuse_request_line(raw[:line_end])
    method, target, minor = request_line.groups()
    version = (1, 1) if minor == "1" else (1, 0)
    headers, names = _fields(text[line_end + 2:-4])
    return _semantics(method, target, version, headers, names)


def _refuse_controls(raw: bytes) -> NoReturn:
    lines = raw.count(b"\r\n")
    if raw.count(b"\r") != lines or raw.count(b"\n") != lines:
        raise HeadError(400, "a line of the request head does not end with CRLF")
    raise HeadError(400, "the request head holds a control character")


def _refuse_request_line(line: bytes) -> NoReturn:
    if not line:
        raise HeadError(400, "an empty line before the request line")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HeadError(400, "the request line is not METHOD, target and version, "
                             "each separated by one space")
    method, target, version = parts
    if not method or method.translate(None, _TCHAR):
        raise HeadError(400, "the request method is not a token")
    if not target or target.translate(None, _VCHAR):
        raise HeadError(400, "the request target is empty or not visible ASCII")
    if (len(version) == 8 and version.startswith(b"HTTP/") and version[6:7] == b"."
            and version[5:6].isdigit() and version[7:8].isdigit()):
        raise HeadError(505, "only HTTP/1.1 and HTTP/1.0 are served here")
    raise HeadError(400, "the request line's HTTP version is malformed")


def _fields(section: str) -> tuple[list[tuple[str, str]], str]:
    """The header lines (``section``: the head between the request line's CRLF and the closing
    empty line, known to hold no bare CR or LF and no control character other than HTAB), and
    their names, lower-cased, each between LFs."""
    if not section:
        return [], "\n"
    headers: list[tuple[str, str]] = []
    append = headers.append
    for line in section.split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            _refuse_fields(section)
        append((name, value.strip(" \t")))
    names = "\n".join(map(_NAME, headers))
    probe = f"\n{names.lower()}\n"
    if "\n\n" in probe or names.encode("latin-1").translate(None, _NAME_OR_LF):
        _refuse_fields(section)
    return headers, probe


def _refuse_fields(section: str) -> NoReturn:
    for line in section.encode("latin-1").split(b"\r\n"):
        problem = _field_problem(line, "header")
        if problem:
            raise HeadError(400, problem)
    raise HeadError(400, "a header line is malformed")


def _field_problem(line: bytes, kind: str) -> str | None:
    """What is wrong with a ``kind`` ("header" or "trailer") line, its CRLF removed, or None."""
    if not line:
        return f"an empty line inside the {kind} section"
    if line[:1] in (b" ", b"\t"):
        return f"a {kind} line starts with whitespace (obsolete line folding)"
    name, colon, _ = line.partition(b":")
    if not colon:
        return f"a {kind} line has no colon"
    if not name:
        return f"a {kind} line has an empty name"
    if name[-1:] in (b" ", b"\t"):
        return f"whitespace between a {kind} name and its colon"
    if name.translate(None, _TCHAR):
        return f"a {kind} name holds a character other than a token's"
    return None


def _semantics(method: str, target: str, version: tuple[int, int],
               headers: list[tuple[str, str]], names: str) -> RequestHead:
    """The framing and connection headers; ``names``: the header names, lower-cased, each
    between LFs."""
    host = names.find("\nhost\n")
    if host >= 0 and names.find("\nhost\n", host + 5) >= 0:
        raise HeadError(400, "more than one Host header")
    if host < 0 and version == (1, 1):
        raise HeadError(400, "an HTTP/1.1 request needs a Host header")
    length = chunked = None
    if "\ncontent-length\n" in names:
        length = _content_length(_values(headers, names, "\ncontent-length\n"))
    if "\ntransfer-encoding\n" in names:
        chunked = _chunked(_values(headers, names, "\ntransfer-encoding\n"), version, length)
    connection: frozenset[str] = frozenset()
    if "\nconnection\n" in names:
        connection = _tokens(",".join(_values(headers, names, "\nconnection\n")).lower())
    expect_continue = version == (1, 1) and "\nexpect\n" in names and "100-continue" in [
        value.lower() for value in _values(headers, names, "\nexpect\n")]
    if version == (1, 1):
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection and "close" not in connection
    return RequestHead(method, target, version, headers, length, bool(chunked), keep_alive,
                       connection, expect_continue)


def _values(headers: list[tuple[str, str]], names: str, key: str) -> list[str]:
    """The values of the headers whose ``key`` (a lower-cased name between LFs) is in
    ``names``; the LFs before a name in ``names`` count the headers before it."""
    values = []
    at = names.find(key)
    while at >= 0:
        values.append(headers[names.count("\n", 0, at)][1])
        at = names.find(key, at + len(key) - 1)
    return values


def _tokens(joined: str) -> frozenset[str]:
    """The tokens of a comma-separated list, its empty elements dropped."""
    if "," not in joined:
        return frozenset((joined,) if joined else ())
    return frozenset(filter(None, map(str.strip, joined.split(","), repeat(" \t"))))


def _content_length(values: list[str]) -> int:
    if len(values) > 1:
        raise HeadError(400, "more than one Content-Length header")
    value = values[0]
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise HeadError(400, "Content-Length is not a number of 1 to 18 digits")
    return int(value)


def _chunked(values: list[str], version: tuple[int, int], length: int | None) -> bool:
    if version == (1, 0):
        raise HeadError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if length is not None:
        raise HeadError(400, "both Transfer-Encoding and Content-Length")
    if ", ".join(values).strip(" \t").lower() != "chunked":
        raise HeadError(501, "the only Transfer-Encoding served is chunked")
    return True


_SIZE, _DATA, _DATA_CR, _DATA_LF, _TRAILER = range(5)


class ChunkedScanner:
    """Finds where a chunked body ends, without changing a byte (the proxy passes the body on
    as it came).

    Each chunk is a size line (1 to 16 hex digits, then CRLF or ``;``-extensions of visible
    ASCII, SP and HTAB, no whitespace before the ``;``; at most :data:`MAX_CHUNK_LINE` bytes
    with its CRLF), that many bytes of data and a CRLF; the chunk of size 0 is followed by
    trailer lines (checked as header lines are) and an empty line, at most :data:`MAX_TRAILERS`
    bytes in all. Bytes may arrive split anywhere; only an unfinished line is kept (bounded by
    those limits). After a HeadError the connection is to be closed, the scanner not fed again.
    """

    __slots__ = ("_left", "_line", "_state", "_trailers", "done")

    def __init__(self) -> None:
        self.done = False
        self._state = _SIZE
        self._left = 0
        self._line = bytearray()
        self._trailers = 0

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """How many leading bytes of ``data`` belong to the body (len(data) unless the body
        ended inside it; then ``done`` is True). HeadError(400) for malformed framing; a
        RuntimeError when fed after ``done``."""
        if self.done:
            raise RuntimeError("the chunked body has already ended")
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - pos)
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_CR
            elif state == _DATA_CR and data[pos:pos + 2] == b"\r\n":
                pos += 2
                self._state = _SIZE
            elif state in (_DATA_CR, _DATA_LF):
                if data[pos] != (13 if state == _DATA_CR else 10):
                    raise HeadError(400, "a chunk's data is not followed by CRLF")
                pos += 1
                self._state = _DATA_LF if state == _DATA_CR else _SIZE
            else:
                pos, line = self._take_line(data, pos, end)
                if line is None:
                    break
                if state == _SIZE:
                    self._size_line(line)
                elif self._trailer_line(line):
                    self.done = True
                    break
        return pos

    def _take_line(self, data: bytes | bytearray | memoryview, pos: int,
                   end: int) -> tuple[int, bytes | None]:
        """The line (with its LF) that ends in ``data`` and the index past it, or (end, None)
        when the line goes on beyond ``data`` (its start is kept)."""
        if self._state == _SIZE:
            budget = MAX_CHUNK_LINE - len(self._line)
        else:
            budget = MAX_TRAILERS - self._trailers - len(self._line)
        stop = min(end, pos + budget)
        lf = _find_lf(data, pos, stop)
        if lf < 0:
            if stop - pos >= budget:
                raise HeadError(400, f"a chunk-size line is longer than {MAX_CHUNK_LINE} bytes"
                                if self._state == _SIZE else
                                f"the chunked body's trailers are longer than {MAX_TRAILERS} "
                                "bytes")
            self._line += data[pos:end]
            return end, None
        if not self._line:
            return lf + 1, bytes(data[pos:lf + 1])
        self._line += data[pos:lf + 1]
        line = bytes(self._line)
        self._line.clear()
        return lf + 1, line

    def _size_line(self, line: bytes) -> None:
        if line[-2:-1] != b"\r":
            raise HeadError(400, "a chunk-size line does not end with CRLF")
        size, _, extensions = line[:-2].partition(b";")
        if not 0 < len(size) <= 16 or size.translate(None, _HEXDIG):
            raise HeadError(400, "a chunk size is not 1 to 16 hex digits")
        if extensions.translate(None, _EXT_CHAR):
            raise HeadError(400, "a chunk extension holds a character other than visible "
                                 "ASCII, space or tab")
        self._left = int(size, 16)
        self._state = _DATA if self._left else _TRAILER

    def _trailer_line(self, line: bytes) -> bool:
        """Whether ``line`` is the empty line that ends the body; HeadError if malformed."""
        self._trailers += len(line)
        if line[-2:-1] != b"\r":
            raise HeadError(400, "a trailer line does not end with CRLF")
        field = line[:-2]
        if not field:
            return True
        if b"\r" in field or len(field.translate(None, _BAD_CTL)) != len(field):
            raise HeadError(400, "a trailer line holds a control character")
        problem = _field_problem(field, "trailer")
        if problem:
            raise HeadError(400, problem)
        return False


def _find_lf(data: bytes | bytearray | memoryview, pos: int, stop: int) -> int:
    if isinstance(data, memoryview):
        found = _LF.search(data, pos, stop)
        return found.start() if found else -1
    return data.find(b"\n", pos, stop)


def may_be_lab_request(start: bytes | bytearray) -> bool:
    """Whether a head that has not all arrived may still be a lab request (``/labs/...``;
    else aiohttp can take the connection now)."""
    space = start.find(b" ", 0, 32)
    if space < 0:
        return len(start) < 32
    target = bytes(start[space + 1:space + 1 + len(LAB_TARGET)])
    return LAB_TARGET.startswith(target)
