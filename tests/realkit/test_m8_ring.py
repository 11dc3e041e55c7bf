"""realkit's io_uring layer (realkit.servers.m8_proactor.Ring) on its own: no network."""

from __future__ import annotations

import time

import pytest

from realkit.servers import m8_proactor as m8

pytestmark = pytest.mark.skipif(m8.available() is not None, reason=f"no io_uring here: {m8.available()}")


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


def test_a_wait_with_nothing_to_complete_ends_at_its_timeout():
    ring = m8.Ring(8)
    try:
        t0 = time.monotonic()
        assert ring.enter(1, 0.05) == []
        assert 0.03 < time.monotonic() - t0 < 2.0
    finally:
        ring.close()
