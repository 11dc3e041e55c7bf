"""Fixtures for the realkit conformance suite: server subprocesses that always go away.

helpers.py is loaded under a unique module name: with pytest's default import mode a plain
`import helpers` could collide with another test directory's helpers module, and a
tests/realkit/__init__.py would shadow the real `realkit` package.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_NAME = "realkit_conformance_helpers"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("helpers.py"))
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)
h = sys.modules[_NAME]


@pytest.fixture
def server_factory():
    """start(config, extra_args=(), preexec_fn=None, **start_server_kwargs) -> ServerProcess; every server started is
    SIGTERMed, then its whole process group SIGKILLed, at teardown, whatever the test did."""
    started: list = []

    def start(config, extra_args=(), preexec_fn=None, **kwargs):
        server = h.start_server(config, extra_args, preexec_fn, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.terminate(timeout_s=10)
        server.kill()


@pytest.fixture(scope="module", params=h.MODELS, ids=h.MODEL_IDS)
def shared_server(request):
    """One server per configuration, shared by the non-destructive protocol tests of a module.
    Those tests must close every connection they open (m1 serves one connection at a time)."""
    config = request.param
    server = h.start_server(config, ("--keepalive-timeout", str(h.SHARED_KEEPALIVE_S)))
    yield server
    server.terminate(timeout_s=10)
    server.kill()


@pytest.fixture
def server(shared_server):
    """The shared server, checked alive before each test so one crash is reported where it happened."""
    if not shared_server.alive():
        pytest.fail(f"shared {shared_server.config.id} server died earlier:\n{shared_server.output()}")
    return shared_server
