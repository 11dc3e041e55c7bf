"""The memory ledger charges what a real server tree holds: the exec'd server process its own RSS,
each worker forked from it the smaller RSS a forked child adds (its parent's file pages are not
its own until it touches them)."""

from __future__ import annotations

import pytest

from simkit import simulate
from simkit.machine import Ledger
from simkit.profile import CostProfile
from simkit.scenario import Hardware, Scenario

pytestmark = pytest.mark.timeout(60)

MIB = 2**20
PROFILE = CostProfile.default().with_params("probe", rss_process_bytes=20 * MIB, rss_worker_bytes=5 * MIB,
                                            rss_thread_bytes=64 * 1024, rss_conn_bytes=400)


def test_the_first_process_is_a_fresh_one_and_later_ones_are_forked_workers():
    ledger = Ledger(PROFILE, Hardware(cores=1))
    assert ledger.add_proc(6)
    assert ledger.rss == 20 * MIB
    assert ledger.add_proc(6) and ledger.add_proc(6)
    assert ledger.rss == 20 * MIB + 2 * 5 * MIB
    assert ledger.procs == 3 and ledger.procs_peak == 3 and ledger.fds == 18


def test_a_forked_worker_that_does_not_fit_is_refused_at_its_own_size():
    # room for the server and one worker, not two: the limit sees the worker's size, not a fresh process's
    ledger = Ledger(PROFILE, Hardware(cores=1, memory_bytes=28 * MIB))
    assert ledger.add_proc(6) and ledger.add_proc(6)
    assert not ledger.add_proc(6) and ledger.failure == "memory"


def test_prefork_rss_grows_by_the_worker_figure_per_worker():
    base = Scenario().replace(model="m6_prefork", cores=1, connections=4, cpu_us=50, duration_s=0.2, warmup_s=0.05)
    one, three = (simulate(base.replace(processes=n), PROFILE) for n in (1, 3))
    assert three.processes_peak - one.processes_peak == 2
    # each worker: its process and its one thread
    assert three.rss_peak_bytes - one.rss_peak_bytes == 2 * (5 * MIB + 64 * 1024)
    # the master is the exec'd server: the tree is one fresh process plus its workers
    assert one.rss_peak_bytes == pytest.approx(20 * MIB + 5 * MIB, rel=0.02)
