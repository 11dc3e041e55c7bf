"""Conformance suite of issue 2, part 3: the command-line face of the servers (deliverable 5):
`serverlab serve`, models named by number, SIGINT, --cpus pinning, and a bad model name."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest
import realkit_conformance_helpers as h


@pytest.mark.timeout(90)
@pytest.mark.parametrize("number", range(1, 8))
def test_serverlab_serve_model_by_number_pinned_and_sigint(number, server_factory):
    """`serverlab serve --model N --cpus 0` prints its port, serves, is pinned to CPU 0, and
    exits 0 on SIGINT."""
    config = h.ServerConfig(f"m{number}-by-number", str(number))
    server = server_factory(config, ("--cpus", "0"))
    h.check_served(server.port, f"num{number}", n=2)
    for p in server.tree():
        assert p.cpu_affinity() == [0], f"{p.pid} not pinned: {p.cpu_affinity()}"
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(20) == 0, server.output()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", h.MODELS, ids=h.MODEL_IDS)
def test_binds_loopback_by_default(config, server_factory):
    """Started without --host, every listening socket of the tree is on 127.0.0.1."""
    server = server_factory(config, pass_host=False)
    h.check_served(server.port, "default-host", n=1)
    listening = [
        c.laddr for p in server.tree() for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "no listening socket found"
    assert {addr.ip for addr in listening} == {"127.0.0.1"}, listening


@pytest.mark.timeout(60)
def test_unknown_model_is_refused():
    out = subprocess.run(
        [sys.executable, *h.SERVE_ENTRY, "--model", "m9_nonsense", "--port", "0"],
        capture_output=True, text=True, timeout=50, cwd=h.REPO_ROOT,
    )
    assert out.returncode == 2
    assert out.stdout.strip() == "", "printed a port for a model that does not exist"
    assert "m9_nonsense" in out.stderr and "name" in out.stderr, out.stderr


