"""The proxy's HTTP/1.1 framing (gateway.proxy.http1): heads parsed, bodies' ends found, and
every head two servers could read two ways refused with its status."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator

import pytest

from gateway.proxy.http1 import (
    MAX_CHUNK_LINE,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_TRAILERS,
    ChunkedScanner,
    HeadError,
    head_end,
    parse_request_head,
)

BROWSER_GET = (
    b"GET /labs/42/lab/tree/work/notebook.ipynb?reset&x=%2F HTTP/1.1\r\n"
    b"Host: gateway.example.org\r\n"
    b"Connection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"\r\n'
    b"sec-ch-ua-mobile: ?0\r\n"
    b'sec-ch-ua-platform: "Linux"\r\n'
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
    b"image/webp,*/*;q=0.8\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-User: ?1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Referer: https://gateway.example.org/jobs\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n"
    b"Cookie: _xsrf=2|1a2b3c4d|0123456789abcdef|1700000000; hpcgw_session=abcdef0123\r\n"
    b"\r\n"
)


def request(*fields: str, line: str = "GET / HTTP/1.1") -> bytes:
    """A head: ``line``, then each of ``fields`` as a header line, then the empty line."""
    return "".join(f"{text}\r\n" for text in (line, *fields, "")).encode("latin-1")


def refusal(raw: bytes) -> HeadError:
    with pytest.raises(HeadError) as caught:
        parse_request_head(raw)
    return caught.value


def test_a_browser_get_head() -> None:
    head = parse_request_head(BROWSER_GET)
    assert (head.method, head.target, head.version) == (
        "GET", "/labs/42/lab/tree/work/notebook.ipynb?reset&x=%2F", (1, 1))
    assert len(head.headers) == 16
    assert head.headers[0] == ("Host", "gateway.example.org")
    assert head.headers[2] == (
        "sec-ch-ua", '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"')
    assert head.headers[-1][0] == "Cookie"
    assert head.length is None
    assert not head.chunked
    assert head.keep_alive
    assert head.connection == frozenset({"keep-alive"})
    assert not head.expect_continue


def test_header_names_stay_as_sent_and_values_lose_only_surrounding_whitespace() -> None:
    head = parse_request_head(request(
        "hOsT:a", "content-TYPE: \t text/plain ;  charset=utf-8 \t", "X-Empty:", "X-Name: caf\xe9"))
    assert head.headers == [("hOsT", "a"), ("content-TYPE", "text/plain ;  charset=utf-8"),
                            ("X-Empty", ""), ("X-Name", "caf\xe9")]


@pytest.mark.parametrize("target", ["*", "http://lab.example:8888/api?x=1", "example.org:443",
                                    "/a/%20b?c=[d]&e={f}"])
def test_any_form_of_target_is_kept_as_sent(target: str) -> None:
    head = parse_request_head(request("Host: a", line=f"OPTIONS {target} HTTP/1.1"))
    assert head.target == target


def test_a_post_with_content_length_and_where_its_body_starts() -> None:
    raw = request("Host: a", "Content-Type: application/json", "Content-Length:  11 ",
                  line="POST /api/jobs HTTP/1.1")
    buffer = raw + b'{"a": "bc"}' + b"GET / HTTP/1.1\r\n"
    end = head_end(buffer)
    assert end == len(raw)
    head = parse_request_head(buffer[:end])
    assert (head.method, head.length, head.chunked) == ("POST", 11, False)
    assert buffer[end:end + 11] == b'{"a": "bc"}'


@pytest.mark.parametrize("value", ["0", "007", "9" * 18])
def test_content_length_of_up_to_18_digits(value: str) -> None:
    assert parse_request_head(request("Host: a", f"Content-Length: {value}")).length == int(value)


@pytest.mark.parametrize("coding", ["chunked", "Chunked", " CHUNKED\t"])
def test_a_chunked_post(coding: str) -> None:
    head = parse_request_head(request("Host: a", f"Transfer-Encoding:{coding}",
                                      line="POST /upload HTTP/1.1"))
    assert head.chunked
    assert head.length is None


@pytest.mark.parametrize(("line", "fields", "keep_alive", "connection"), [
    ("GET / HTTP/1.1", ["Host: a"], True, set()),
    ("GET / HTTP/1.1", ["Host: a", "Connection: close"], False, {"close"}),
    ("GET / HTTP/1.1", ["Host: a", "Connection: Keep-Alive, Close"], False,
     {"keep-alive", "close"}),
    ("GET / HTTP/1.1", ["Host: a", "Connection: keep-alive", "Connection: X-Foo ,, close"],
     False, {"keep-alive", "x-foo", "close"}),
    ("GET / HTTP/1.0", [], False, set()),
    ("GET / HTTP/1.0", ["Connection: keep-alive"], True, {"keep-alive"}),
    ("GET / HTTP/1.0", ["Host: a", "Connection: Keep-Alive"], True, {"keep-alive"}),
    ("GET / HTTP/1.0", ["Connection: keep-alive, close"], False, {"keep-alive", "close"}),
    ("GET / HTTP/1.0", ["Connection: upgrade"], False, {"upgrade"}),
])
def test_keep_alive_rules(line: str, fields: list[str], keep_alive: bool,
                          connection: set[str]) -> None:
    head = parse_request_head(request(*fields, line=line))
    assert head.keep_alive is keep_alive
    assert head.connection == connection


def test_http_1_0_may_have_a_content_length_and_no_host() -> None:
    head = parse_request_head(request("Content-Length: 3", line="POST /x HTTP/1.0"))
    assert (head.version, head.length, head.keep_alive) == ((1, 0), 3, False)


def test_a_websocket_upgrade_head() -> None:
    head = parse_request_head(request(
        "Host: gateway.example.org", "Connection: Upgrade", "Pragma: no-cache",
        "Upgrade: websocket", "Origin: https://gateway.example.org",
        "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        line="GET /labs/42/api/kernels/k1/channels?session_id=s1 HTTP/1.1"))
    assert head.connection == frozenset({"upgrade"})
    assert head.keep_alive
    assert head.length is None
    assert not head.chunked


@pytest.mark.parametrize(("line", "fields", "expect_continue"), [
    ("PUT /f HTTP/1.1", ["Host: a", "Content-Length: 5", "Expect: 100-continue"], True),
    ("PUT /f HTTP/1.1", ["Host: a", "Content-Length: 5", "expect:  100-Continue "], True),
    ("PUT /f HTTP/1.1", ["Host: a", "Content-Length: 5"], False),
    ("PUT /f HTTP/1.1", ["Host: a", "Content-Length: 5", "Expect: 200-ok"], False),
    ("PUT /f HTTP/1.0", ["Content-Length: 5", "Expect: 100-continue"], False),
])
def test_expect_100_continue(line: str, fields: list[str], expect_continue: bool) -> None:
    assert parse_request_head(request(*fields, line=line)).expect_continue is expect_continue


SMUGGLING = {
    "CL.TE": (request("Host: a", "Content-Length: 5", "Transfer-Encoding: chunked"), 400, "both"),
    "TE.CL": (request("Host: a", "Transfer-Encoding: chunked", "Content-Length: 5"), 400, "both"),
    "TE xchunked": (request("Host: a", "Transfer-Encoding: xchunked"), 501, "only"),
    "TE space before colon": (request("Host: a", "Transfer-Encoding : chunked"),
                              400, "whitespace between"),
    "TE tab before colon": (request("Host: a", "Transfer-Encoding\t: chunked"),
                            400, "whitespace between"),
    "TE gzip, chunked": (request("Host: a", "Transfer-Encoding: gzip, chunked"), 501, "only"),
    "TE chunked, chunked": (request("Host: a", "Transfer-Encoding: chunked, chunked"), 501, "only"),
    "TE twice": (request("Host: a", "Transfer-Encoding: chunked",
                         "Transfer-Encoding: chunked"), 501, "only"),
    "TE identity": (request("Host: a", "Transfer-Encoding: identity"), 501, "only"),
    "TE empty": (request("Host: a", "Transfer-Encoding:"), 501, "only"),
    "TE in HTTP/1.0": (request("Transfer-Encoding: chunked", line="POST / HTTP/1.0"),
                       400, "HTTP/1.0"),
    "CL twice, equal": (request("Host: a", "Content-Length: 5", "Content-Length: 5"),
                        400, "more than one Content-Length"),
    "CL twice, unequal": (request("Host: a", "Content-Length: 5", "Content-Length: 6"),
                          400, "more than one Content-Length"),
    "CL list": (request("Host: a", "Content-Length: 5, 5"), 400, "1 to 18 digits"),
    "CL plus sign": (request("Host: a", "Content-Length: +5"), 400, "1 to 18 digits"),
    "CL minus sign": (request("Host: a", "Content-Length: -1"), 400, "1 to 18 digits"),
    "CL space inside": (request("Host: a", "Content-Length: 1 0"), 400, "1 to 18 digits"),
    "CL hex": (request("Host: a", "Content-Length: 0x5"), 400, "1 to 18 digits"),
    "CL empty": (request("Host: a", "Content-Length:"), 400, "1 to 18 digits"),
    "CL superscript digit": (request("Host: a", "Content-Length: \xb2"), 400, "1 to 18 digits"),
    "CL 19 digits": (request("Host: a", "Content-Length: " + "1" * 19), 400, "1 to 18 digits"),
    "obs-fold": (request("Host: a", "X-A: b", " c"), 400, "folding"),
    "obs-fold with tab": (request("Host: a", "X-A: b", "\tc"), 400, "folding"),
    "folded TE": (request("Host: a", "Transfer-Encoding:", " chunked"), 400, "folding"),
    "bare LF ending a header": (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400, "CRLF"),
    "bare LF ending the request line": (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "CRLF"),
    "bare LF ending the head": (b"GET / HTTP/1.1\r\nHost: a\n\n", 400, "empty line (CRLF CRLF)"),
    "bare LF inside a value": (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\nc\r\n\r\n", 400, "CRLF"),
    "bare CR inside a value": (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n", 400, "CRLF"),
    "NUL in a value": (request("Host: a", "X: b\x00c"), 400, "control character"),
    "ESC in a value": (request("Host: a", "X: \x1b[31m"), 400, "control character"),
    "DEL in a value": (request("Host: a", "X: b\x7f"), 400, "control character"),
    "vertical tab in a value": (request("Host: a", "X: b\x0bc"), 400, "control character"),
    "header name with a space": (request("Host: a", "Transfer Encoding: chunked"), 400, "token"),
    "header name with a slash": (request("Host: a", "X/Y: z"), 400, "token"),
    "header name with obs-text": (request("Host: a", "X-\xe9: z"), 400, "token"),
    "empty header name": (request("Host: a", ": z"), 400, "empty name"),
    "header line without colon": (request("Host: a", "Transfer-Encoding chunked"), 400, "no colon"),
    "empty line inside the head": (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nX: y\r\n\r\n",
                                   400, "empty line inside"),
    "leading empty line": (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                           400, "before the request line"),
    "only an empty line": (b"\r\n\r\n", 400, "before the request line"),
    "no Host": (request("Accept: */*"), 400, "needs a Host"),
    "two Hosts": (request("Host: a", "Host: b"), 400, "more than one Host"),
    "two Hosts, adjacent": (request("X: y", "Host: a", "host: a"), 400, "more than one Host"),
    "two Hosts in HTTP/1.0": (request("Host: a", "Host: b", line="GET / HTTP/1.0"),
                              400, "more than one Host"),
    "double space": (request("Host: a", line="GET  / HTTP/1.1"), 400, "one space"),
    "trailing space": (request("Host: a", line="GET / HTTP/1.1 "), 400, "one space"),
    "leading space": (request("Host: a", line=" GET / HTTP/1.1"), 400, "one space"),
    "tab for space": (request("Host: a", line="GET\t/ HTTP/1.1"), 400, "one space"),
    "space in target": (request("Host: a", line="GET /a b HTTP/1.1"), 400, "one space"),
    "obs-text in target": (request("Host: a", line="GET /caf\xe9 HTTP/1.1"), 400, "target"),
    "method not a token": (request("Host: a", line="G@T / HTTP/1.1"), 400, "method"),
    "no version": (request("Host: a", line="GET /"), 400, "one space"),
    "lower-case version": (request("Host: a", line="GET / http/1.1"), 400, "version"),
    "short version": (request("Host: a", line="GET / HTTP/1"), 400, "version"),
    "long version": (request("Host: a", line="GET / HTTP/1.1.1"), 400, "version"),
    "HTTP/1.2": (request("Host: a", line="GET / HTTP/1.2"), 505, "HTTP/1.1 and HTTP/1.0"),
    "HTTP/0.9": (request("Host: a", line="GET / HTTP/0.9"), 505, "HTTP/1.1 and HTTP/1.0"),
    "HTTP/2.0": (request("Host: a", line="GET / HTTP/2.0"), 505, "HTTP/1.1 and HTTP/1.0"),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\n", 505, "HTTP/1.1 and HTTP/1.0"),
    "no empty line at the end": (b"GET / HTTP/1.1\r\nHost: a\r\n", 400, "empty line (CRLF CRLF)"),
}


@pytest.mark.parametrize(("raw", "status", "reason"), SMUGGLING.values(), ids=SMUGGLING.keys())
def test_refused(raw: bytes, status: int, reason: str) -> None:
    error = refusal(raw)
    assert error.status == status
    assert reason in error.detail
    assert error.detail
    assert error.detail.isascii() and error.detail.isprintable()
    assert str(error).startswith(f"{status}: ")


def test_the_http_2_preface_is_refused_as_a_version() -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    end = head_end(preface)
    assert end == 18
    assert refusal(preface[:end]).status == 505


def test_a_very_long_header_value_is_accepted() -> None:
    value = "v" * (32 * 1024)
    head = parse_request_head(request("Host: a", f"X-Long: {value}"))
    assert head.headers[1] == ("X-Long", value)


def test_header_count_limit() -> None:
    fields = [f"X-{n}: {n}" for n in range(MAX_HEADERS - 1)]
    assert len(parse_request_head(request("Host: a", *fields)).headers) == MAX_HEADERS
    assert refusal(request("Host: a", *fields, "X-One-Too-Many: 1")).status == 431


def test_head_size_limit() -> None:
    raw = request("Host: a", "X: " + "v" * MAX_HEAD)
    assert refusal(raw).status == 431
    with pytest.raises(HeadError) as caught:
        head_end(raw)
    assert caught.value.status == 431


def test_head_end_across_feeds() -> None:
    second = request("Host: b", line="GET /second HTTP/1.1")
    stream = BROWSER_GET + second + b"GET /third"
    for split in range(len(stream)):
        found = head_end(stream[:split])
        assert found == (len(BROWSER_GET) if split >= len(BROWSER_GET) else -1)
    assert head_end(stream, len(BROWSER_GET)) == len(BROWSER_GET) + len(second)
    assert head_end(stream, len(BROWSER_GET) + len(second)) == -1


def test_head_end_resumes_where_it_left_off() -> None:
    buffer = bytearray(b"junk")
    searched = 0
    for byte in BROWSER_GET:
        buffer.append(byte)
        found = head_end(buffer, 4, searched=searched)
        assert found == head_end(bytes(buffer), 4)
        searched = len(buffer) - 4
    assert found == 4 + len(BROWSER_GET)


def test_head_end_refuses_more_than_max_head_bytes_without_an_end() -> None:
    exact = b"GET / HTTP/1.1\r\nX: " + b"v" * (MAX_HEAD - 23) + b"\r\n\r\n"
    assert len(exact) == MAX_HEAD
    assert head_end(exact) == MAX_HEAD
    assert head_end(b"xx" + exact, 2) == MAX_HEAD + 2
    assert head_end(exact[:-1]) == -1
    with pytest.raises(HeadError) as caught:
        head_end(exact[:-1] + b"x")
    assert caught.value.status == 431
    assert head_end(b"x" * (MAX_HEAD - 1)) == -1
    with pytest.raises(HeadError):
        head_end(b"x" * MAX_HEAD)


# Chunked bodies

NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
SMUGGLED = b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"

BODIES = {
    "one chunk": b"5\r\nhello\r\n0\r\n\r\n",
    "empty": b"0\r\n\r\n",
    "several chunks": b"1\r\na\r\n10\r\n0123456789abcdef\r\nA\r\n" + b"\r\n" * 5
                      + b"\r\n0\r\n\r\n",
    "upper- and lower-case hex": b"aB\r\n" + b"x" * 0xAB + b"\r\n0\r\n\r\n",
    "leading zeros": b"0000000000000003\r\nabc\r\n000\r\n\r\n",
    "extensions": b'5;name=value;quoted="a b;c"\r\nhello\r\n3;\tx\r\nabc\r\n0;last\r\n\r\n',
    "trailers": b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Empty:\r\nX-Obs: caf\xe9\r\n\r\n",
    "a smuggled request inside": b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
    "data holding CRLFs and zeros": b"7\r\n0\r\n\r\n\r\n\r\n0\r\n\r\n",
}


def pieces(data: bytes, rng: random.Random) -> Iterator[bytes]:
    at = 0
    while at < len(data):
        size = rng.choice((1, 2, 3, 5, 8, 13, 64))
        yield data[at:at + size]
        at += size


def scan(chunks: Iterable[bytes | bytearray | memoryview]) -> tuple[int, ChunkedScanner]:
    """How many bytes of ``chunks`` the scanner took before it was done."""
    scanner = ChunkedScanner()
    taken = 0
    for chunk in chunks:
        count = scanner.feed(chunk)
        taken += count
        if scanner.done:
            return taken, scanner
        assert count == len(chunk)
    return taken, scanner


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_chunked_body_whole_byte_by_byte_and_in_random_splits(body: bytes) -> None:
    stream = body + NEXT_REQUEST
    assert scan(iter([stream]))[0] == len(body)
    assert scan(iter([memoryview(stream)]))[0] == len(body)
    assert scan(iter([bytearray(stream)]))[0] == len(body)
    assert scan(stream[n:n + 1] for n in range(len(stream)))[0] == len(body)
    for seed in range(20):
        assert scan(pieces(stream, random.Random(seed)))[0] == len(body)
    assert scan(memoryview(stream)[n:n + 1] for n in range(len(stream)))[0] == len(body)


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_a_chunked_body_that_has_not_all_arrived(body: bytes) -> None:
    for cut in range(len(body)):
        taken, scanner = scan(iter([body[:cut]]))
        assert (taken, scanner.done) == (cut, False)


def test_the_count_stops_at_the_body_end_with_a_pipelined_request_behind() -> None:
    body = BODIES["trailers"]
    scanner = ChunkedScanner()
    assert scanner.feed(body[:7]) == 7
    assert scanner.feed(body[7:] + NEXT_REQUEST) == len(body) - 7
    assert scanner.done
    with pytest.raises(RuntimeError):
        scanner.feed(NEXT_REQUEST)


def test_a_chunked_body_ending_exactly_at_the_end_of_the_data() -> None:
    scanner = ChunkedScanner()
    assert scanner.feed(b"3\r\nabc\r\n0\r\n\r") == 12
    assert not scanner.done
    assert scanner.feed(b"\n") == 1
    assert scanner.done


def test_an_empty_feed_takes_nothing() -> None:
    scanner = ChunkedScanner()
    assert scanner.feed(b"") == 0
    assert not scanner.done


def test_the_largest_chunk_size_is_accepted() -> None:
    scanner = ChunkedScanner()
    assert scanner.feed(b"ffffffffffffffff\r\nabc") == 21
    assert not scanner.done


def test_chunk_size_line_limit() -> None:
    extension = b";" + b"x" * (MAX_CHUNK_LINE - 4)
    assert scan(iter([b"1" + extension + b"\r\na\r\n0\r\n\r\n"]))[1].done
    line = b"1" + extension + b"x\r\n"
    for chunks in ([line], [line[:MAX_CHUNK_LINE], line[MAX_CHUNK_LINE:]]):
        with pytest.raises(HeadError) as caught:
            scan(iter(chunks))
        assert caught.value.status == 400
    with pytest.raises(HeadError):
        ChunkedScanner().feed(b"1" * MAX_CHUNK_LINE)


def test_trailer_section_limit() -> None:
    field = b"X: " + b"v" * (MAX_TRAILERS - 7) + b"\r\n"
    assert len(field) + 2 == MAX_TRAILERS
    assert scan(iter([b"0\r\n" + field + b"\r\n"]))[1].done
    for body in (b"0\r\nY" + field + b"\r\n", b"0\r\n" + field + b"Y: 1\r\n\r\n"):
        with pytest.raises(HeadError) as caught:
            scan(pieces(body, random.Random(0)))
        assert caught.value.status == 400


MALFORMED = {
    "size g": b"g\r\nabc\r\n0\r\n\r\n",
    "empty size": b"\r\nabc\r\n0\r\n\r\n",
    "17 hex digits": b"00000000000000005\r\nhello\r\n0\r\n\r\n",
    "0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "plus sign": b"+5\r\nhello\r\n0\r\n\r\n",
    "minus sign": b"-5\r\nhello\r\n0\r\n\r\n",
    "underscore": b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
    "space before size": b" 5\r\nhello\r\n0\r\n\r\n",
    "space after size": b"5 \r\nhello\r\n0\r\n\r\n",
    "tab after size": b"5\t\r\nhello\r\n0\r\n\r\n",
    "space before an extension": b"5 ;x\r\nhello\r\n0\r\n\r\n",
    "extension without semicolon": b"5 x\r\nhello\r\n0\r\n\r\n",
    "control character in an extension": b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
    "obs-text in an extension": b"5;a=\xe9\r\nhello\r\n0\r\n\r\n",
    "bare CR in a size line": b"5\rx\r\nhello\r\n0\r\n\r\n",
    "bare LF after size": b"5\nhello\r\n0\r\n\r\n",
    "missing CRLF after data": b"5\r\nhelloX\r\n0\r\n\r\n",
    "data longer than its size": b"3\r\nhello\r\n0\r\n\r\n",
    "bare LF after data": b"5\r\nhello\n0\r\n\r\n",
    "bare CR after data": b"5\r\nhello\r0\r\n\r\n",
    "bare LF after the last chunk": b"5\r\nhello\r\n0\n\r\n",
    "bare LF ending the body": b"5\r\nhello\r\n0\r\n\n",
    "bare LF after a trailer": b"0\r\nX: y\n\r\n",
    "bare CR in a trailer": b"0\r\nX: y\rz\r\n\r\n",
    "NUL in a trailer": b"0\r\nX: y\x00\r\n\r\n",
    "folded trailer": b"0\r\nX: y\r\n z\r\n\r\n",
    "trailer without colon": b"0\r\nX y\r\n\r\n",
    "trailer name with a space": b"0\r\nX Y: z\r\n\r\n",
    "trailer with space before colon": b"0\r\nContent-Length : 5\r\n\r\n",
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_chunked_framing(body: bytes) -> None:
    for chunks in ([body], [body[n:n + 1] for n in range(len(body))],
                   list(pieces(body, random.Random(1)))):
        with pytest.raises(HeadError) as caught:
            scan(iter(chunks))
        assert caught.value.status == 400
        assert caught.value.detail.isascii()


# Mutated heads and bodies, against plain re-statements of the rules

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e]+) (HTTP/\d\.\d)")
FIELD_LINE = re.compile(rb"(" + TOKEN + rb"):[ \t]*(.*?)[ \t]*")
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
SIZE_LINE = re.compile(rb"[0-9A-Fa-f]{1,16}(;[\x20-\x7e\t]*)?\r\n")
TRAILER_LINE = re.compile(TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n")
NOISE = [b" ", b"\t", b"\r", b"\n", b"\r\n", b":", b",", b";", b"\x00", b"\x7f", b"\xe9", b"a",
         b"A", b"0", b"5", b"-", b"/", b""]


def mutated(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + rng.choice(NOISE) + data[at + rng.choice((0, 1, 1, 2)):]


def head_by_the_rules(raw: bytes) -> int | tuple[object, ...]:
    """The status ``raw`` is refused with, or the head's fields, by the module's rules."""
    if not raw.endswith(b"\r\n\r\n"):
        return 400
    lines = raw[:-4].split(b"\r\n")
    if any(CONTROL.search(line) or b"\r" in line for line in lines):
        return 400
    if len(lines) - 1 > MAX_HEADERS:
        return 431
    request_line = REQUEST_LINE.fullmatch(lines[0])
    if not request_line:
        return 400
    if request_line[3] not in (b"HTTP/1.0", b"HTTP/1.1"):
        return 505
    version = (1, int(request_line[3][-1:]))
    fields = [FIELD_LINE.fullmatch(line) for line in lines[1:]]
    if not all(fields):
        return 400
    headers = [(field[1].decode(), field[2].decode("latin-1")) for field in fields if field]

    def values(name: str) -> list[str]:
        return [value for key, value in headers if key.lower() == name]

    hosts, lengths, codings = values("host"), values("content-length"), values("transfer-encoding")
    if len(hosts) > 1 or (version == (1, 1) and not hosts) or len(lengths) > 1:
        return 400
    if lengths and not re.fullmatch(r"[0-9]{1,18}", lengths[0]):
        return 400
    if codings and (version == (1, 0) or lengths):
        return 400
    tokens = [token.strip(" \t").lower() for value in codings for token in value.split(",")]
    if codings and tokens != ["chunked"]:
        return 501
    connection = {token.strip(" \t").lower() for value in values("connection")
                  for token in value.split(",")} - {""}
    keep_alive = "close" not in connection and (version == (1, 1) or "keep-alive" in connection)
    expect = version == (1, 1) and "100-continue" in [v.lower() for v in values("expect")]
    return (request_line[1].decode(), request_line[2].decode(), version, headers,
            int(lengths[0]) if lengths else None, bool(codings), keep_alive, connection,
            expect)


def parsed(raw: bytes) -> int | tuple[object, ...]:
    try:
        head = parse_request_head(raw)
    except HeadError as error:
        return error.status
    return (head.method, head.target, head.version, head.headers, head.length, head.chunked,
            head.keep_alive, head.connection, head.expect_continue)


HEADS = [
    BROWSER_GET,
    request("Host: a", "Content-Length: 12", "Expect: 100-continue", "Connection: close",
            line="PUT /f HTTP/1.1"),
    request("Host: a", "Transfer-Encoding: chunked", "Trailer: X-Sum", line="POST / HTTP/1.1"),
    request("Host: a", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13"),
    request("Connection: keep-alive", "Content-Length: 3", line="POST / HTTP/1.0"),
]


@pytest.mark.parametrize("seed", range(8))
def test_mutated_heads_are_judged_by_the_rules(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        raw = rng.choice(HEADS)
        for _ in range(rng.choice((1, 1, 2, 3))):
            raw = mutated(raw, rng)
        assert parsed(raw) == head_by_the_rules(raw), raw


def body_by_the_rules(data: bytes) -> int | str:
    """Where the chunked body at the start of ``data`` ends, "refused", or "short"."""
    at = 0
    while True:
        if b"\n" not in data[at:]:
            return "short"
        size_line = SIZE_LINE.match(data, at)
        if not size_line:
            return "refused"
        size = int(size_line[0].partition(b";")[0].rstrip(b"\r\n"), 16)
        at = size_line.end() + size
        if size == 0:
            break
        if len(data) < at + 2:
            return "short" if b"\r\n".startswith(data[at:]) else "refused"
        if data[at:at + 2] != b"\r\n":
            return "refused"
        at += 2
    while True:
        if b"\n" not in data[at:]:
            return "short"
        if data[at:at + 2] == b"\r\n":
            return at + 2
        trailer = TRAILER_LINE.match(data, at)
        if not trailer:
            return "refused"
        at = trailer.end()


def scanned(chunks: Iterable[bytes]) -> int | str:
    try:
        taken, scanner = scan(chunks)
    except HeadError:
        return "refused"
    return taken if scanner.done else "short"


@pytest.mark.parametrize("seed", range(8))
def test_mutated_bodies_are_judged_by_the_rules_however_they_are_split(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        data = rng.choice(list(BODIES.values()))
        for _ in range(rng.choice((1, 1, 2))):
            data = mutated(data, rng)
        data += NEXT_REQUEST
        expected = body_by_the_rules(data)
        assert scanned([data]) == expected, data
        assert scanned(data[n:n + 1] for n in range(len(data))) == expected, data
        assert scanned(pieces(data, rng)) == expected, data
