"""Where a request ends: the buffering worker's scanner, byte by byte, against gunicorn's parser."""

from __future__ import annotations

from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from hypothesis import given, settings
from hypothesis import strategies as st

from mailservice.serving.http_framing import Framing, RequestScanner, Verdict

MAX_HEAD = 1024
MAX_BODY = 1000


def scan(data: bytes, max_body: int = MAX_BODY) -> Framing:
    return RequestScanner(MAX_HEAD, max_body).check(data)


def scan_bytewise(data: bytes) -> list[Framing]:
    """The scanner's answer after each byte of `data` arrives, on one scanner."""
    scanner = RequestScanner(MAX_HEAD, MAX_BODY)
    return [scanner.check(data[: n + 1]) for n in range(len(data))]


def post(body: bytes, *headers: str) -> bytes:
    lines = ["POST /send-email HTTP/1.1", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*chunks: bytes, trailers: str = "") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return out + b"0\r\n" + trailers.encode() + b"\r\n"


def test_a_request_without_a_body_ends_with_its_head() -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = scan_bytewise(request)
    assert {a.verdict for a in answers[:-1]} == {Verdict.INCOMPLETE}
    assert answers[-1] == Framing(Verdict.COMPLETE, end=len(request))


def test_empty_lines_before_the_request_line_do_not_end_the_head() -> None:
    request = b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert scan(request[:6]).verdict is Verdict.INCOMPLETE
    assert scan(request) == Framing(Verdict.COMPLETE, end=len(request))


def test_a_content_length_body_is_complete_only_when_all_of_it_is_in() -> None:
    request = post(b'{"a": 1}', "Content-Length: 8")
    answers = scan_bytewise(request)
    assert {a.verdict for a in answers[:-1]} == {Verdict.INCOMPLETE}
    assert answers[-1] == Framing(Verdict.COMPLETE, end=len(request))
    pipelined = request + b"GET / HTTP/1.1\r\n"
    assert scan(pipelined) == Framing(Verdict.COMPLETE, end=len(request))


def test_a_body_declared_larger_than_the_limit_is_handed_over_with_the_head() -> None:
    request = post(b"", f"Content-Length: {MAX_BODY + 1}")
    answer = scan(request)
    assert answer.verdict is Verdict.HAND_OFF and answer.close_after


def test_framings_gunicorn_refuses_from_the_head_are_handed_over_at_once() -> None:
    for headers in (
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: gzip",),
        ("Content-Length: 5", "Content-Length: 5"),
        ("Content-Length: -5",),
        ("Content-Length: 0x10",),
    ):
        answer = scan(post(b"", *headers))
        assert answer.verdict is Verdict.HAND_OFF, headers
    http10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert scan(http10).verdict is Verdict.HAND_OFF


def test_a_chunked_body_is_followed_to_its_last_chunk_and_trailers() -> None:
    for body in (chunked(b"hello", b" world"), chunked(b"x" * 20, trailers="X-Sum: 1\r\n")):
        request = post(body, "Transfer-Encoding: chunked")
        answers = scan_bytewise(request + b"GET")
        assert {a.verdict for a in answers[: len(request) - 1]} == {Verdict.INCOMPLETE}
        assert answers[len(request) - 1] == Framing(Verdict.COMPLETE, end=len(request))


def test_chunk_extensions_are_allowed() -> None:
    request = post(b"5;name=value\r\nhello\r\n0\r\n\r\n", "Transfer-Encoding: chunked")
    assert scan(request) == Framing(Verdict.COMPLETE, end=len(request))


def test_a_malformed_chunked_body_is_refused_with_400() -> None:
    for body in (b"zz\r\nhello\r\n", b"+5\r\nhello\r\n", b"5\r\nhelloXX0\r\n\r\n", b"1" * 5000):
        answer = scan(post(body, "Transfer-Encoding: chunked"))
        assert (answer.verdict, answer.status) == (Verdict.REJECT, 400), body[:20]


def test_a_chunked_body_over_the_limit_is_handed_over_once_past_it() -> None:
    under = post(b"%x\r\n" % 2000 + b"x" * MAX_BODY, "Transfer-Encoding: chunked")
    assert scan(under).verdict is Verdict.INCOMPLETE
    over = under + b"x"
    answer = scan(over)
    assert answer.verdict is Verdict.HAND_OFF and answer.close_after


def test_a_head_larger_than_the_limit_is_refused_with_431() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"p" * MAX_HEAD
    assert (scan(head).verdict, scan(head).status) == (Verdict.REJECT, 431)
    assert scan(head + b"\r\n\r\n").status == 431


def test_expect_100_continue_is_noticed_on_http_11_only() -> None:
    head = post(b"", "Content-Length: 5", "Expect: 100-continue")
    assert scan(head) == Framing(Verdict.INCOMPLETE, expects_continue=True)
    http10 = b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    assert not scan(http10).expects_continue


def consumed_by_gunicorn(data: bytes) -> int:
    """How many bytes of `data` gunicorn's own parser takes as the first request."""
    parser = RequestParser(Config(), iter([data]), ("127.0.0.1", 1))
    request = next(parser)
    while request.body.read(8192):
        pass
    return len(data) - len(parser.unreader.take_buffered())


@settings(max_examples=150, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=5),
    use_chunked=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=6),
)
def test_the_scanner_ends_a_request_where_gunicorn_does(
    chunks: list[bytes], use_chunked: bool, cuts: list[int]
) -> None:
    body = b"".join(chunks)
    if use_chunked:
        request = post(chunked(*chunks), "Transfer-Encoding: chunked")
    else:
        request = post(body, f"Content-Length: {len(body)}")
    data = request + b"GET /next HTTP/1.1\r\n\r\n"
    assert consumed_by_gunicorn(data) == len(request)
    scanner = RequestScanner(MAX_HEAD, MAX_BODY)
    for cut in sorted(c for c in cuts if c < len(request)):  # the request arriving in pieces
        assert scanner.check(data[:cut]).verdict is Verdict.INCOMPLETE
    assert scanner.check(data) == Framing(Verdict.COMPLETE, end=len(request))
