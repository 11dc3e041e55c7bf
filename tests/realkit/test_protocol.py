"""realkit.protocol: the incremental parser and the response writer (no sockets, fast)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realkit import protocol
from realkit.protocol import ERROR, ROOT, WORK, RequestParser, response_bytes

pytestmark = pytest.mark.timeout(60)

GET_ROOT = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
GET_WORK = (
    b"GET /work?cpu_us=200&gil_us=20&io_us=5&resp_bytes=64 HTTP/1.1\r\nHost: x\r\nX-Request-Id: r-7\r\n\r\n"
)


def parse_all(data: bytes, chunks: list[int] | None = None) -> list[protocol.Request]:
    """Feed `data` split at the given chunk sizes (default: whole), pulling requests after each feed."""
    parser = RequestParser()
    out = []
    pos = 0
    for size in chunks or [len(data)]:
        parser.feed(data[pos : pos + size])
        pos += size
        while (request := parser.next_request()) is not None:
            out.append(request)
    if pos < len(data):
        parser.feed(data[pos:])
        while (request := parser.next_request()) is not None:
            out.append(request)
    return out


def split_response(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_root_request():
    (req,) = parse_all(GET_ROOT)
    assert req.kind == ROOT and req.keep_alive and req.request_id is None and not req.has_work
    status, headers, body = split_response(response_bytes(req))
    assert status == 200 and body == protocol.ROOT_BODY
    assert int(headers[b"content-length"]) == len(body)
    assert b"connection" not in headers


def test_work_request_fields_and_body_size():
    (req,) = parse_all(GET_WORK)
    assert req.kind == WORK and req.has_work
    assert (req.cpu_us, req.gil_us, req.io_us, req.resp_bytes) == (200.0, 20.0, 5.0, 64)
    assert req.request_id == b"r-7"
    status, headers, body = split_response(response_bytes(req))
    assert status == 200 and len(body) == 64 and headers[b"x-request-id"] == b"r-7"
    assert int(headers[b"content-length"]) == 64


def test_work_defaults_to_zero_and_ignores_unknown_keys():
    (req,) = parse_all(b"GET /work?foo=1&resp_bytes=0 HTTP/1.1\r\n\r\n")
    assert (req.kind, req.cpu_us, req.gil_us, req.io_us, req.resp_bytes) == (WORK, 0, 0, 0, 0)
    assert split_response(response_bytes(req))[2] == b""


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=200))
def test_any_split_gives_the_same_requests(sizes):
    data = GET_WORK + GET_ROOT + GET_WORK
    whole = [repr(r) for r in parse_all(data)]
    assert [repr(r) for r in parse_all(data, sizes)] == whole
    assert len(whole) == 3


def test_one_byte_at_a_time():
    data = GET_WORK + GET_ROOT
    reqs = parse_all(data, [1] * len(data))
    assert [r.kind for r in reqs] == [WORK, ROOT]


def test_pipelined_requests_come_out_in_order():
    data = b"".join(
        b"GET /work?resp_bytes=%d HTTP/1.1\r\nX-Request-Id: %d\r\n\r\n" % (i, i) for i in range(50)
    )
    reqs = parse_all(data)
    assert [r.request_id for r in reqs] == [str(i).encode() for i in range(50)]
    assert [r.resp_bytes for r in reqs] == list(range(50))


def test_incomplete_request_waits():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert parser.next_request() is None and parser.buffered > 0
    parser.feed(b"\r\n")
    assert parser.next_request().kind == ROOT
    assert parser.next_request() is None and parser.buffered == 0


def test_connection_close_and_http10():
    (req,) = parse_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert not req.keep_alive
    assert split_response(response_bytes(req))[1][b"connection"] == b"close"
    (req,) = parse_all(b"GET / HTTP/1.0\r\n\r\n")
    assert not req.keep_alive
    (req,) = parse_all(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert req.keep_alive
    assert split_response(response_bytes(req))[1][b"connection"] == b"keep-alive"


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"get / HTTP/1.1\r\n\r\n",
        b"GET nopath HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColonHere\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"GET /work?cpu_us=abc HTTP/1.1\r\n\r\n",
        b"GET /work?io_us=-1 HTTP/1.1\r\n\r\n",
        b"GET /work?gil_us=nan HTTP/1.1\r\n\r\n",
        b"GET /work?resp_bytes=1.5 HTTP/1.1\r\n\r\n",
        b"GET /work?cpu_us=1e12 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Request-Id: a\x01b\r\n\r\n",
    ],
)
def test_malformed_gives_400_then_nothing(raw):
    parser = RequestParser()
    parser.feed(raw + GET_ROOT)
    req = parser.next_request()
    assert req.kind == ERROR and req.status == 400 and not req.keep_alive
    assert parser.next_request() is None and parser.dead
    status, headers, body = split_response(response_bytes(req))
    assert (
        status == 400 and headers[b"connection"] == b"close" and int(headers[b"content-length"]) == len(body)
    )


def test_valid_requests_before_a_malformed_one_are_still_answered():
    reqs = parse_all(GET_ROOT + GET_ROOT + b"BROKEN\r\n\r\n" + GET_ROOT)
    assert [(r.kind, r.status) for r in reqs] == [(ROOT, 200), (ROOT, 200), (ERROR, 400)]


def test_oversized_header_block_gives_431_complete_or_not():
    big = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    (req,) = parse_all(big)
    assert (req.kind, req.status) == (ERROR, 431)
    # Still incomplete but already past the limit: refused without waiting for the rest.
    parser = RequestParser()
    parser.feed(big[:8300])
    req = parser.next_request()
    assert req is not None and req.status == 431
    assert split_response(response_bytes(req))[0] == 431


def test_header_block_just_under_the_limit_is_fine():
    head = b"GET / HTTP/1.1\r\nX-Pad: "
    pad = protocol.MAX_HEADER_BYTES - len(head) - 4
    (req,) = parse_all(head + b"a" * pad + b"\r\n\r\n")
    assert req.kind == ROOT


def test_unknown_path_404_keeps_connection_and_other_methods_405():
    (req,) = parse_all(b"GET /nope HTTP/1.1\r\nX-Request-Id: q\r\n\r\n")
    assert (req.kind, req.status, req.keep_alive) == (ERROR, 404, True)
    status, headers, _ = split_response(response_bytes(req))
    assert status == 404 and headers[b"x-request-id"] == b"q" and b"connection" not in headers
    (req,) = parse_all(b"POST / HTTP/1.1\r\n\r\n")
    assert (req.status, req.keep_alive) == (405, True)


def test_request_body_is_skipped_even_when_split():
    data = b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" + GET_WORK
    for sizes in ([len(data)], [40, 1, 1, 100], [1] * len(data)):
        assert [r.kind for r in parse_all(data, sizes)] == [ROOT, WORK]


def test_stray_crlf_between_requests_is_tolerated():
    assert [r.kind for r in parse_all(GET_ROOT + b"\r\n" + GET_ROOT)] == [ROOT, ROOT]


def test_work_body_is_exact_for_many_sizes():
    for size in (0, 1, 15, 16, 17, 1000, 65536, 100_001):
        assert len(protocol.work_body(size)) == size
