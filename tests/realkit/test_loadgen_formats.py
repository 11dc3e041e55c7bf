"""The load generator beyond the serverlab protocol: HTTP/1.0 servers (one request per connection, a
body that ends at EOF), answers counted by status code, and the latency histogram exported in
HdrHistogram's format by `serverlab load --hdr`. The servers are python's http.server on 127.0.0.1,
in a thread, for well under a second of load each."""

from __future__ import annotations

import http.server
import itertools
import json
import threading

import pytest
from click.testing import CliRunner

from realkit.loadgen import LoadSpec, _Framer, run_load
from serverlab.cli import main
from simkit.scenario import Workload

# -- the framer alone ------------------------------------------------------------------------------


def test_an_http10_body_without_content_length_ends_at_eof():
    framer = _Framer()
    assert framer.feed(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nhel") == (0, 0)
    assert framer.feed(b"lo, more body") == (0, 0)
    assert framer.eof() == (1, 0)
    assert framer.code == b"200" and framer.close
    assert framer.eof() == (0, 0)  # completed once


@pytest.mark.parametrize(("head", "close"), [
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2", True),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2", False),
    (b"HTTP/1.1 200 OK\r\nconnection: close\r\nContent-Length: 2", True),
])
def test_the_framer_says_when_the_server_closes_after_an_answer(head, close):
    framer = _Framer()
    assert framer.feed(head + b"\r\n\r\nok") == (1, 0)
    assert framer.close is close and framer.code == b"200"


def test_no_content_status_codes_have_no_body_and_codes_are_kept():
    framer = _Framer()
    assert framer.feed(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n") == (2, 1)
    assert framer.code == b"404"
    with pytest.raises(ValueError, match="Transfer-Encoding"):
        _Framer().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


# -- against http.server -----------------------------------------------------------------------------


class _Quiet(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the generator aborts what is open at its end
        pass


def _handler(protocol: str, content_length: bool, codes=None):
    counter = itertools.count()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = protocol

        def do_GET(self):  # noqa: N802 - http.server's name
            code = codes[next(counter) % len(codes)] if codes else 200
            self.send_response(code)
            if content_length:
                self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    return Handler


class _Server:
    def __init__(self, handler) -> None:
        self.httpd = _Quiet(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _load(url: str, **kw):
    workload = Workload(connections=2, duration_s=0.3, warmup_s=0.05, timeout_s=2.0, **kw)
    return run_load(LoadSpec(url=url, workload=workload, processes=0))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "until-eof"])
def test_an_http10_server_completes_requests_not_resets(content_length):
    with _Server(_handler("HTTP/1.0", content_length)) as url:
        report = _load(url)
    assert report.completed > 5, report.summary()
    assert report.errors_reset == report.errors_http == report.errors_timeout == 0, report.summary()
    assert report.status_codes == {200: report.completed}
    assert report.connects >= report.completed - 2  # one request per connection (2 made before the window)


@pytest.mark.timeout(60)
def test_answers_are_counted_by_status_code_and_class():
    with _Server(_handler("HTTP/1.1", True, codes=[200, 200, 201, 404, 503])) as url:
        report = _load(url)
    codes = report.status_codes
    assert set(codes) == {200, 201, 404, 503}, codes
    assert codes[200] + codes[201] == report.completed
    assert codes[404] + codes[503] == report.errors_http
    summary = report.summary()
    assert summary["status_2xx"] == report.completed and summary["status_3xx"] == 0
    assert summary["status_4xx"] == codes[404] and summary["status_5xx"] == codes[503]
    assert summary["status_unframed"] == 0
    assert summary["status_codes"] == {str(k): v for k, v in sorted(codes.items())}
    json.dumps(summary)


@pytest.mark.timeout(60)
def test_cli_load_exports_hdr_and_shows_the_status_breakdown(tmp_path):
    hdr = tmp_path / "load.hgrm"
    with _Server(_handler("HTTP/1.1", True, codes=[200, 200, 200, 404])) as url:
        runner = CliRunner()
        as_json = runner.invoke(main, ["load", "--url", url, "-c", "2", "--duration", "0.3", "--processes", "0",
                                       "--json", "--hdr", str(hdr)])
        table = runner.invoke(main, ["load", "--url", url, "-c", "2", "--duration", "0.3", "--processes", "0"],
                              terminal_width=200)
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["status_codes"]["200"] == data["completed"] > 0 and data["status_4xx"] == data["errors_http"] > 0
    lines = hdr.read_text().splitlines()
    assert lines[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    last = [line.split() for line in lines[2:] if not line.startswith("#")][-1]
    assert float(last[1]) == 1.0 and int(last[2]) == data["completed"]
    assert f"Total count    = {data['completed']:12d}" in hdr.read_text()
    assert table.exit_code == 0, table.output
    assert "status" in table.stdout and "4xx" in table.stdout and "404:" in table.stdout


def test_cli_load_refuses_an_hdr_file_it_cannot_write(tmp_path):
    out = CliRunner().invoke(main, ["load", "--url", "http://127.0.0.1:9/", "--hdr", str(tmp_path / "no" / "x")])
    assert out.exit_code == 2 and "hdr" in out.output and "cannot write" in out.output
