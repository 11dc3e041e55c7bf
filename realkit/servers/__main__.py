"""`python -m realkit.servers '<json>'`: run one real server in this process, print its bound port on one
line once ready, serve until SIGTERM/SIGINT, exit 0. The argument is realkit.servers.server_argument's
JSON object, e.g. '{"model": {"name": "m4_reactor_workers", "pool": 8}, "port": 0, "cores": [0]}'."""

from __future__ import annotations

import argparse
import sys

from realkit.servers import parse_server_argument, run_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m realkit.servers",
        description="Run one real server; print its port when ready; serve until SIGTERM.",
    )
    parser.add_argument(
        "spec", help='JSON: {"model": {ModelSpec fields}, "host": "127.0.0.1", "port": 0, "cores": [..] | null}'
    )
    args = parser.parse_args(argv)

    def ready(bound_port: int) -> None:
        sys.stdout.write(f"{bound_port}\n")
        sys.stdout.flush()

    try:
        server = parse_server_argument(args.spec)
        run_server(server.model, server.host, server.port, ready, cores=server.cores)
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
