"""The servers docs/external-servers.md's recipes run as external targets (realkit.target), each answering
every GET with a fixed small body ("ok\\n", with Content-Length, HTTP/1.1 keep-alive):

    python -m realkit.recipes nginx --port P --workers W --dir D   write D/nginx.conf, exec nginx
    python -m realkit.recipes threading --port P                   http.server.ThreadingHTTPServer
    uvicorn realkit.recipes:asgi_app ...                           a one-line ASGI app

The nginx launcher replaces itself with nginx (exec), so the measured process tree is nginx's alone.
nginx_conf() is the one nginx configuration of the project (benchmarks -> realkit may import it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BODY = b"ok\n"

NGINX_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 65;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog={backlog};
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""


def nginx_conf(port: int, workers: int, directory: str, body: str = "ok\\n", backlog: int = 4096,
               worker_connections: int = 65536) -> str:
    """nginx.conf for `workers` worker processes on 127.0.0.1:`port`, every file under `directory`."""
    return NGINX_CONF.format(port=port, workers=workers, dir=directory, body=body, backlog=backlog,
                             worker_connections=worker_connections)


class OkHandler(BaseHTTPRequestHandler):
    """Answers every GET with BODY: HTTP/1.1, Content-Length, the connection kept open. http.server sends
    the head and the body in two writes: with Nagle's algorithm on, the second waits for the client's
    delayed ACK (~40 ms per request), a stall of the socket options, not of the architecture."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args) -> None:  # noqa: A002 - one line per request would be the cost
        pass


class OkServer(ThreadingHTTPServer):
    """A thread per connection. Python's default listen backlog is 5; the recipe sets the models' 4096 so
    a start-up burst of connects is not SYN-retried (a separate effect from the architecture's)."""

    daemon_threads = True
    request_queue_size = 4096


async def asgi_app(scope, receive, send) -> None:
    """One-line ASGI app: BODY for every HTTP request."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


def _stop_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m realkit.recipes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="server", required=True)
    ng = sub.add_parser("nginx", help="write DIR/nginx.conf and exec nginx in the foreground")
    ng.add_argument("--port", type=int, required=True)
    ng.add_argument("--workers", type=int, default=1)
    ng.add_argument("--dir", required=True, help="an existing directory for the config, pid and logs")
    ng.add_argument("--nginx", default="nginx", help="the nginx binary")
    th = sub.add_parser("threading", help="http.server.ThreadingHTTPServer answering BODY")
    th.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.server == "nginx":
        conf = Path(args.dir) / "nginx.conf"
        conf.write_text(nginx_conf(args.port, args.workers, args.dir))
        os.execvp(args.nginx, [args.nginx, "-p", args.dir, "-c", str(conf)])
    _stop_on_sigterm()
    with OkServer(("127.0.0.1", args.port), OkHandler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
