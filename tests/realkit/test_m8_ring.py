"""realkit's io_uring layer (realkit.servers.m8_proactor.Ring) on its own: no network."""

from __future__ import annotations

import ctypes
import errno
import time

import pytest

from realkit.servers import Stopper
from realkit.servers import m8_proactor as m8
from simkit.scenario import ModelSpec

needs_io_uring = pytest.mark.skipif(m8.available() is not None, reason=f"no io_uring here: {m8.available()}")


@needs_io_uring
def test_more_operations_than_the_submission_queue_holds_lose_no_completion():
    """prep() submits a full queue on its own; those operations' completions wait for the next
    enter() (they were once reaped and dropped there: connections that were never answered)."""
    ring = m8.Ring(8)
    try:
        for token in range(1, 30):
            ring.prep(m8.OP_NOP, -1, token)
        seen: list[int] = []
        deadline = time.monotonic() + 5
        while len(seen) < 29 and time.monotonic() < deadline:
            seen += [token for token, res, _flags in ring.enter(1, 0.1) if res == 0]
        assert sorted(seen) == list(range(1, 30))
    finally:
        ring.close()


@needs_io_uring
def test_a_wait_with_nothing_to_complete_ends_at_its_timeout():
    ring = m8.Ring(8)
    try:
        t0 = time.monotonic()
        assert ring.enter(1, 0.05) == []
        assert 0.03 < time.monotonic() - t0 < 2.0
    finally:
        ring.close()


def test_without_io_uring_the_server_refuses_to_start_and_says_why(monkeypatch):
    def refused(*_args):
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(m8, "_syscall", refused)
    assert "io_uring_setup" in m8.available() and "Linux 5.19+" in m8.available()
    ready = []
    with pytest.raises(OSError, match="m8_proactor needs io_uring"):
        m8.serve(ModelSpec.for_model("m8_proactor"), "127.0.0.1", 0, Stopper(), ready.append)
    assert ready == []
