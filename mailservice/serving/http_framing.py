"""Where one HTTP/1.x request ends in the bytes received so far: the buffering worker's rule.

`RequestScanner.check(data)` is called each time more of a request has arrived and answers with
a `Framing`: keep reading (INCOMPLETE), hand `data[:end]` to a thread (COMPLETE), hand the
head over now although the body is not in (HAND_OFF: gunicorn or the app will answer without
reading it), or answer an error here and close (REJECT). It follows gunicorn's own framing
rules (RFC 9112 section 6): a body is delimited by Content-Length or by chunked transfer coding,
and a request with neither has none. Where gunicorn would refuse the head itself (both
Content-Length and Transfer-Encoding, a coding other than chunked last, chunked on HTTP/1.0,
two Content-Lengths, a bad number) the head is handed over at once: gunicorn answers 400
from the head alone. The scanner may read more than gunicorn would, never less, so a thread
never waits on the client for bytes the scanner thought were not coming.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

CRLF = b"\r\n"
HEX_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
MAX_CHUNK_LINE = 4096  # a chunk-size line (size and extensions) longer than this is refused


class Verdict(StrEnum):
    INCOMPLETE = "incomplete"
    COMPLETE = "complete"
    HAND_OFF = "hand-off"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Framing:
    """The scanner's answer; `end` is where the request ends (COMPLETE), `status` and `detail`
    what to answer (REJECT), `close_after` that the connection cannot be reused (the body was
    not read), `expects_continue` that the client waits for `100 Continue` before its body."""

    verdict: Verdict
    end: int = 0
    status: int = 0
    detail: str = ""
    close_after: bool = False
    expects_continue: bool = False


INCOMPLETE = Framing(Verdict.INCOMPLETE)


def _reject(status: int, detail: str) -> Framing:
    return Framing(Verdict.REJECT, status=status, detail=detail)


class RequestScanner:
    """Follows one request's bytes as they arrive (one scanner per request, not per socket).

    `max_head` bounds the head; `max_body` is the app's limit on bodies (MAX_CONTENT_LENGTH):
    a body declared larger is handed over at once, and a chunked body is handed over as soon as
    more than `max_body` of it is in, so that the app can answer 413 from what is buffered.
    """

    def __init__(self, max_head: int, max_body: int) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.head_end: int | None = None  # offset just past the head's empty line
        self._searched = 0  # the head's end was not found before this offset
        self._length: int | None = None  # Content-Length, or None for chunked
        self._expects_continue = False
        self._chunk_at = 0  # offset of the next chunk-size line
        self._chunked_body = 0  # chunk data bytes before _chunk_at
        self._in_trailers = False

    @property
    def head_done(self) -> bool:
        return self.head_end is not None

    def check(self, data: bytes | bytearray) -> Framing:
        """What to do with `data`, every byte received of this request so far (and maybe more)."""
        if self.head_end is None:
            framing = self._check_head(data)
            if framing is not None:
                return framing
        assert self.head_end is not None
        if self._length is not None:
            end = self.head_end + self._length
            return Framing(Verdict.COMPLETE, end=end) if len(data) >= end else self._waiting()
        return self._check_chunked(data)

    def _waiting(self) -> Framing:
        return Framing(Verdict.INCOMPLETE, expects_continue=self._expects_continue)

    def _check_head(self, data: bytes | bytearray) -> Framing | None:
        """None once the head is in and a body is to be read; else the answer."""
        start = 0
        while data[start : start + 2] == CRLF:  # RFC 9112 2.2: empty lines before the request
            start += 2
        found = data.find(b"\r\n\r\n", max(start, self._searched))
        if found < 0:
            if len(data) - start > self.max_head:
                return _reject(431, f"The request head is larger than {self.max_head} bytes.")
            self._searched = max(start, len(data) - 3)  # a terminator may straddle the next read
            return INCOMPLETE
        if found + 4 - start > self.max_head:
            return _reject(431, f"The request head is larger than {self.max_head} bytes.")
        self.head_end = found + 4
        lines = bytes(data[start:found]).split(CRLF)
        http11 = lines[0].rstrip().endswith(b"HTTP/1.1")
        lengths: list[bytes] = []
        codings: list[bytes] = []
        expect = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
            elif name == b"expect":
                expect = value.strip().lower()
        if codings:
            if lengths or codings[-1] != b"chunked" or not http11:
                return Framing(Verdict.HAND_OFF, end=self.head_end, close_after=True)
            self._chunk_at = self.head_end
        elif not lengths:
            return Framing(Verdict.COMPLETE, end=self.head_end)  # no body
        elif len(lengths) > 1 or not lengths[0].isdigit():
            return Framing(Verdict.HAND_OFF, end=self.head_end, close_after=True)
        else:
            length = int(lengths[0])
            if length > self.max_body:  # the app answers 413 from the head
                return Framing(Verdict.HAND_OFF, end=self.head_end, close_after=True)
            self._length = length
        self._expects_continue = http11 and expect == b"100-continue"
        return None

    def _check_chunked(self, data: bytes | bytearray) -> Framing:
        """Walk the chunks in; COMPLETE after the last chunk and the trailer section."""
        at = self._chunk_at
        while not self._in_trailers:
            eol = data.find(CRLF, at)
            if eol < 0:
                if len(data) - at > MAX_CHUNK_LINE:
                    return _reject(400, "A chunk-size line is too long.")
                return self._waiting()
            size_text = bytes(data[at:eol]).split(b";", 1)[0].rstrip(b" \t")
            if not HEX_SIZE.fullmatch(size_text):
                return _reject(400, "The chunked body is malformed.")
            size = int(size_text, 16)
            if size == 0:
                at = eol + 2
                self._chunk_at, self._in_trailers = at, True
                break
            data_end = eol + 2 + size
            if len(data) < data_end + 2:
                if self._chunked_body + len(data) - (eol + 2) > self.max_body:
                    return Framing(Verdict.HAND_OFF, end=len(data), close_after=True)
                return self._waiting()
            if data[data_end : data_end + 2] != CRLF:
                return _reject(400, "A chunk does not end with CRLF.")
            self._chunked_body += size
            if self._chunked_body > self.max_body:
                return Framing(Verdict.HAND_OFF, end=data_end + 2, close_after=True)
            at = self._chunk_at = data_end + 2
        if data[at : at + 2] == CRLF:
            return Framing(Verdict.COMPLETE, end=at + 2)
        found = data.find(b"\r\n\r\n", at)
        if found >= 0:
            return Framing(Verdict.COMPLETE, end=found + 4)
        if len(data) - at > self.max_head:
            return _reject(431, "The chunked body's trailer section is too large.")
        return self._waiting()
