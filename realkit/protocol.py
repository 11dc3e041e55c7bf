"""The HTTP/1.1 subset every real server speaks (docs/DESIGN.md §4).

    GET /work?cpu_us=200&gil_us=20&io_us=0&resp_bytes=64 HTTP/1.1   -> the work, then resp_bytes bytes
    GET / HTTP/1.1                                                  -> zero work, body b"ok\\n"

Rules (so standard clients, wrk, ab and curl, can drive every server):
- Keep-alive by default for HTTP/1.1, `Connection: close` honoured; HTTP/1.0 closes unless it asks
  for `Connection: keep-alive`.
- Pipelined requests are parsed one after another from one buffer; servers answer them in order.
- Malformed request -> 400 and close; a line ending in a bare LF is malformed (CRLF only: a bare LF
  is a smuggling vector, refused rather than guessed at). Header block (request line + headers +
  blank line) over 8 KiB -> 431 and close. Unknown path -> 404, connection kept. A method other than
  GET -> 405, kept. The body of a 400 or 431 says why, naming the field and the cap it exceeded.
- `X-Request-Id` is echoed back when present (printable ASCII only), so a client can check that each
  response belongs to its request even across pipelining and reconnects.
- Every response carries Content-Length. A request body announced by Content-Length (up to 1 MiB) is
  read and ignored; Transfer-Encoding is refused with 400 (no chunked bodies: no smuggling games).

The parser is incremental and pull-based: `feed()` appends bytes from any number of recv calls,
`next_request()` returns the next complete Request or None. Pulling (rather than returning every
request a recv produced) lets a server apply back-pressure: it stops pulling while its output is
blocked, and stops reading while `buffered` is large.

This module does no I/O and no work: `response_bytes(request)` builds the answer; the server does
the work the request asks for (realkit.work) before sending it.
"""

from __future__ import annotations

import math
import re

MAX_HEADER_BYTES = 8 * 1024
MAX_BODY_BYTES = 1 << 20
# Caps on what one request may ask for: a server is a lab instrument, not a denial-of-service target.
MAX_WORK_US = 10_000_000.0
MAX_RESP_BYTES = 64 << 20

ROOT = 0  # GET /
WORK = 1  # GET /work?...
ERROR = 2  # answer with `status`

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",  # a bug in the server, never a client's fault
}
_CRLF2 = b"\r\n\r\n"
ROOT_BODY = b"ok\n"
_H_CONNECTION, _H_REQUEST_ID, _H_CONTENT_LENGTH, _H_TRANSFER_ENCODING = range(4)
_HEADER_KIND = {
    b"connection": _H_CONNECTION,
    b"x-request-id": _H_REQUEST_ID,
    b"content-length": _H_CONTENT_LENGTH,
    b"transfer-encoding": _H_TRANSFER_ENCODING,
}
_WORK_KEYS = {b"cpu_us": 0, b"gil_us": 1, b"io_us": 2, b"resp_bytes": 3}


class ProtocolError(Exception):
    """A request the server must refuse; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class Request:
    """One parsed request. kind is ROOT, WORK or ERROR; for ERROR, `status` says which answer."""

    __slots__ = (
        "kind",
        "status",
        "reason",
        "keep_alive",
        "request_id",
        "cpu_us",
        "gil_us",
        "io_us",
        "resp_bytes",
        "path",
        "http10",
    )

    def __init__(
        self,
        kind: int,
        keep_alive: bool,
        request_id: bytes | None = None,
        status: int = 200,
        cpu_us: float = 0.0,
        gil_us: float = 0.0,
        io_us: float = 0.0,
        resp_bytes: int = 0,
        path: bytes = b"/",
        http10: bool = False,
        reason: str = "",
    ) -> None:
        self.kind = kind
        self.status = status
        self.reason = reason  # for ERROR: why, said in the body (the field and the cap it exceeded)
        self.keep_alive = keep_alive
        self.request_id = request_id
        self.cpu_us = cpu_us
        self.gil_us = gil_us
        self.io_us = io_us
        self.resp_bytes = resp_bytes
        self.path = path  # the target without its query
        self.http10 = http10  # an HTTP/1.0 client must be told "Connection: keep-alive" explicitly

    @property
    def has_work(self) -> bool:
        return self.kind == WORK and (self.cpu_us > 0 or self.gil_us > 0 or self.io_us > 0)

    def __repr__(self) -> str:
        kind = ("ROOT", "WORK", "ERROR")[self.kind]
        return (
            f"Request({kind}, status={self.status}, keep_alive={self.keep_alive}, id={self.request_id!r}, "
            f"cpu_us={self.cpu_us:g}, gil_us={self.gil_us:g}, io_us={self.io_us:g}, resp_bytes={self.resp_bytes})"
        )


def error_request(status: int, reason: str = "") -> Request:
    return Request(ERROR, keep_alive=False, status=status, reason=reason)


def parse_work_query(query: bytes) -> tuple[float, float, float, int]:
    """`cpu_us=200&gil_us=20&io_us=0&resp_bytes=64` -> (cpu_us, gil_us, io_us, resp_bytes).

    Missing keys are zero, unknown keys are ignored, a bad or out-of-range value raises ProtocolError(400).
    """
    values: list[float] = [0.0, 0.0, 0.0, 0.0]
    if query:
        for part in query.split(b"&"):
            if not part:
                continue
            key, _, raw = part.partition(b"=")
            index = _WORK_KEYS.get(key)
            if index is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                raise ProtocolError(400, f"{key.decode('latin-1')}: not a number") from None
            name = key.decode("latin-1")
            if not math.isfinite(value) or value < 0:
                raise ProtocolError(400, f"{name}: must be a finite number >= 0")
            if index < 3 and value > MAX_WORK_US:
                raise ProtocolError(
                    400, f"{name}: {value:g} is over the cap MAX_WORK_US = {MAX_WORK_US:.0f} us"
                )
            if index == 3:
                if value > MAX_RESP_BYTES:
                    raise ProtocolError(
                        400, f"resp_bytes: {value:g} is over the cap MAX_RESP_BYTES = {MAX_RESP_BYTES} bytes"
                    )
                if value != int(value):
                    raise ProtocolError(400, "resp_bytes: must be an integer")
            values[index] = value
    cpu_us, gil_us, io_us, resp = values
    return cpu_us, gil_us, io_us, int(resp)


# The whole head, validated by one regex (C speed): request line (path and query captured apart),
# then header lines "token:value" with no CR or LF inside a value (a bare CR/LF is a smuggling
# vector: refused, not guessed at).
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_LINE = rb"([A-Z]+) (/[^ ?\r\n]*)(?:\?([^ \r\n]*))? HTTP/1\.([01])"
_HEAD_RE = re.compile(_LINE + rb"((?:\r\n" + _TOKEN + rb":[^\r\n]*)*)")
# The common case in one pass: the same head, but no header whose value matters here (wrk sends only
# Host). Any other header is only validated. When this fails, _HEAD_RE decides: malformed, or a
# header to look at line by line.
_INTERESTING = rb"(?i:connection|x-request-id|content-length|transfer-encoding):"
_MALFORMED = "malformed request line or header"
_BARE_LF = "a line ends in a bare LF (CRLF required)"
_BARE_LF_RE = re.compile(rb"(?<!\r)\n")
_PLAIN_HEAD_RE = re.compile(_LINE + rb"(?:\r\n(?!" + _INTERESTING + rb")" + _TOKEN + rb":[^\r\n]*)*")


def parse_head(head: bytes) -> tuple[Request, int]:
    """Parse one header block (without the final blank line) -> (request, body bytes to skip).

    Raises ProtocolError for anything malformed.
    """
    request_id = None
    body = 0
    match = _PLAIN_HEAD_RE.fullmatch(head)
    if match is not None:
        method, path, query, minor = match.groups()
        http10 = minor == b"0"
        keep_alive = not http10  # HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes
    else:
        match = _HEAD_RE.fullmatch(head)
        if match is None:
            raise ProtocolError(400, _MALFORMED)
        method, path, query, minor, headers = match.groups()
        http10 = minor == b"0"
        keep_alive, request_id, body = _parse_headers(headers, not http10)
    if method != b"GET":
        return Request(ERROR, keep_alive, request_id, status=405, path=path, http10=http10), body
    if path == b"/":
        return Request(ROOT, keep_alive, request_id, 200, 0.0, 0.0, 0.0, 0, path, http10), body
    if path == b"/work":
        cpu_us, gil_us, io_us, resp = parse_work_query(query)
        return Request(WORK, keep_alive, request_id, 200, cpu_us, gil_us, io_us, resp, path, http10), body
    return Request(ERROR, keep_alive, request_id, status=404, path=path, http10=http10), body


def _parse_headers(headers: bytes, keep_alive: bool) -> tuple[bool, bytes | None, int]:
    """The headers that matter -> (keep_alive, request_id, body length). `headers` passed _HEAD_RE."""
    request_id = None
    body = 0
    seen_length = False
    header_kind = _HEADER_KIND.get
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        kind = header_kind(name.lower())
        if kind is None:
            continue  # a header this server has no use for (Host, User-Agent, ...)
        value = value.strip(b" \t")
        if kind == _H_CONNECTION:
            tokens = {t.strip() for t in value.lower().split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        elif kind == _H_REQUEST_ID:
            if not _printable(value):
                raise ProtocolError(400, "X-Request-Id must be printable ASCII")
            request_id = value
        elif kind == _H_CONTENT_LENGTH:
            if seen_length or not value.isdigit():
                raise ProtocolError(400, "Content-Length: bad or repeated")
            seen_length = True
            # (Digits only; a length past the cap by its digit count alone is not converted: int()
            # refuses strings of over 4,300 digits.)
            body = int(value) if len(value) <= 16 else MAX_BODY_BYTES + 1
            if body > MAX_BODY_BYTES:
                shown = value.decode("ascii") if len(value) <= 16 else f"a {len(value)}-digit length"
                raise ProtocolError(
                    400, f"Content-Length: {shown} is over the cap MAX_BODY_BYTES = {MAX_BODY_BYTES} bytes"
                )
        else:
            raise ProtocolError(400, "Transfer-Encoding: not supported")
    return keep_alive, request_id, body


def _printable(value: bytes) -> bool:
    # Visible ASCII and spaces only: the id is echoed into a header, so it must not break one.
    return all(32 <= b < 127 for b in value)


class RequestParser:
    """Incremental parser for one connection.

    feed(data) with whatever recv returned; then call next_request() until it returns None.
    After a fatal error (400 / 431) next_request() returns one ERROR request, then None forever:
    the server answers it and closes the connection.
    """

    __slots__ = ("_buf", "_skip", "_dead", "max_header_bytes")

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._buf = b""
        self._skip = 0  # body bytes of the previous request still to discard
        self._dead = False
        self.max_header_bytes = max_header_bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed by a request."""
        return len(self._buf)

    @property
    def dead(self) -> bool:
        return self._dead

    @property
    def idle(self) -> bool:
        """Between requests: nothing buffered and no body left to skip (the header deadline of a
        server runs from the first byte received while idle)."""
        return not self._buf and not self._skip

    def feed(self, data: bytes) -> None:
        if self._dead or not data:
            return
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
        self._buf = self._buf + data if self._buf else data

    def next_request(self) -> Request | None:
        buf = self._buf
        if self._dead or not buf:
            return None
        end = buf.find(_CRLF2)
        if end < 0:
            # Still incomplete: refuse as soon as it cannot fit any more, or as soon as a line ends
            # in a bare LF (it could never end in CRLF CRLF: without this it would wait forever).
            if len(buf) > self.max_header_bytes:
                return self._fail(431, self._too_large())
            if _BARE_LF_RE.search(buf) is not None:
                return self._fail(400, _BARE_LF)
            return None
        if end + 4 > self.max_header_bytes:
            return self._fail(431, self._too_large())
        head = buf[:end]
        rest = buf[end + 4 :]
        try:
            request, body = parse_head(head)
        except ProtocolError as exc:
            # Stray CRLFs before a request line are allowed (RFC 9112 §2.2); rare, so tried only here.
            if not head.startswith(b"\r\n"):
                return self._fail(exc.status, self._why(exc, head))
            try:
                request, body = parse_head(head.lstrip(b"\r\n"))
            except ProtocolError as exc2:
                return self._fail(exc2.status, self._why(exc2, head))
        if body:
            if len(rest) >= body:
                rest = rest[body:]
            else:
                self._skip = body - len(rest)
                rest = b""
        self._buf = rest
        return request

    def _too_large(self) -> str:
        return f"header block over the cap MAX_HEADER_BYTES = {self.max_header_bytes} bytes"

    @staticmethod
    def _why(exc: ProtocolError, head: bytes) -> str:
        if exc.reason == _MALFORMED and b"\n" in head.replace(b"\r\n", b""):
            return _BARE_LF
        return exc.reason

    def _fail(self, status: int, reason: str = "") -> Request:
        self._dead = True
        self._buf = b""
        return error_request(status, reason)


# -- responses ------------------------------------------------------------------------------------
_HEAD_CACHE: dict[tuple[int, int, bool, bool], bytes] = {}
_BODY_CACHE: dict[int, bytes] = {}


def _head(status: int, length: int, keep_alive: bool, http10_keepalive: bool = False) -> bytes:
    key = (status, length, keep_alive, http10_keepalive)
    head = _HEAD_CACHE.get(key)
    if head is None:
        parts = [
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            % (status, _REASONS[status], length)
        ]
        if status == 405:
            parts.append(b"Allow: GET\r\n")
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif http10_keepalive:
            parts.append(b"Connection: keep-alive\r\n")
        head = b"".join(parts)
        if len(_HEAD_CACHE) < 4096:
            _HEAD_CACHE[key] = head
    return head


def work_body(resp_bytes: int) -> bytes:
    """The body of /work: exactly resp_bytes bytes (a repeating, checkable pattern)."""
    body = _BODY_CACHE.get(resp_bytes)
    if body is None:
        # One allocation of the body's size where possible (a 64 MiB body must not cost 128 MiB).
        whole, rest = divmod(resp_bytes, 16)
        body = _PATTERN * whole
        if rest:
            body += _PATTERN[:rest]
        if resp_bytes <= 1 << 20 and len(_BODY_CACHE) < 1024:
            _BODY_CACHE[resp_bytes] = body
    return body


_PATTERN = b"0123456789abcdef"


def _error_body(status: int, reason: str = "") -> bytes:
    if reason:
        return b"%d %s: %s\n" % (status, _REASONS[status], reason.encode("ascii", "replace"))
    return b"%d %s\n" % (status, _REASONS[status])


# Precomputed answers to the hot case (GET / without an id), built once.
_ROOT_KEEP = _head(200, len(ROOT_BODY), True) + b"\r\n" + ROOT_BODY
_ROOT_CLOSE = _head(200, len(ROOT_BODY), False) + b"\r\n" + ROOT_BODY


def response_bytes(request: Request) -> bytes:
    """The full response (head and body) for a request whose work, if any, is done."""
    kind = request.kind
    rid = request.request_id
    if kind == ROOT and rid is None and not request.http10:
        return _ROOT_KEEP if request.keep_alive else _ROOT_CLOSE
    if kind == ROOT:
        status, body = 200, ROOT_BODY
    elif kind == WORK:
        status, body = 200, work_body(request.resp_bytes)
    else:
        status, body = request.status, _error_body(request.status, request.reason)
    head = _head(status, len(body), request.keep_alive, request.http10)
    if rid is not None:
        return b"".join((head, b"X-Request-Id: ", rid, b"\r\n\r\n", body))
    return b"".join((head, b"\r\n", body))
