"""The live connections' cache footprint (simkit.costs.cache_share): a recv(), a send() and the load
generator's request cost more once thousands of connections are live, measured alone by
calibration.probes.probe_conn_cache and the generator probe's wide run."""

from __future__ import annotations

import math

import pytest

from simkit import costs, simulate
from simkit.profile import CostProfile
from simkit.scenario import Scenario

PROFILE = CostProfile.default()
BASE = Scenario().replace(duration_s=0.3, warmup_s=0.1, cores=1)


def test_the_share_rises_from_zero_to_the_ceiling_around_the_knee():
    p = PROFILE.with_params("probe", cache_knee_conns=500.0)
    assert costs.cache_share(p, 0) == 0.0
    assert costs.cache_share(p, 10) == pytest.approx(1 - math.exp(-10 / 500))
    assert costs.cache_share(p, 500) == pytest.approx(1 - 1 / math.e)
    assert costs.cache_share(p, 20_000) > 0.999
    assert costs.cache_share(p.with_params("probe", cache_knee_conns=0.0), 5000) == 0.0


def test_recv_and_send_pay_their_share_of_the_ceiling_and_the_default_profile_pays_none():
    wide = BASE.replace(connections=5000).workload
    assert costs.recv_s(PROFILE, wide) == costs.recv_s(PROFILE, BASE.replace(connections=10).workload)
    p = PROFILE.with_params("probe", syscall_cache_miss_s=2e-6, cache_knee_conns=500.0)
    extra = 2e-6 * costs.cache_share(p, 5000)
    assert costs.recv_s(p, wide) == pytest.approx(costs.recv_s(PROFILE, wide) + extra)
    assert costs.send_s(p, wide) == pytest.approx(costs.send_s(PROFILE, wide) + extra)
    # the analytic bound prices the same request
    assert costs.demands(BASE.replace(model="m3_reactor", connections=5000), p).syscall_s == pytest.approx(
        costs.demands(BASE.replace(model="m3_reactor", connections=5000), PROFILE).syscall_s + 2 * extra)


def test_a_server_with_thousands_of_connections_is_slower_per_request_than_with_ten():
    # the old simulator charged a request the same whatever the connections: throughput per CPU flat
    p = PROFILE.with_params("probe", syscall_cache_miss_s=20e-6, cache_knee_conns=300.0)
    few = simulate(BASE.replace(model="m3_reactor", connections=20, duration_s=0.5), p)
    many = simulate(BASE.replace(model="m3_reactor", connections=3000, duration_s=0.5, warmup_s=0.6), p)
    per_few, per_many = few.cpu_util / few.throughput_rps, many.cpu_util / many.throughput_rps
    assert per_many > per_few + 0.8 * 2 * 20e-6 * costs.cache_share(p, 3000)


def test_the_generator_pays_its_own_ceiling_per_request():
    p = PROFILE.with_params("probe", client_cache_miss_s=30e-6, cache_knee_conns=300.0,
                            client_cpu_per_wake_s=5e-6)
    s = BASE.replace(model="m3_reactor", connections=3000, duration_s=0.5, warmup_s=0.6)
    cheap = simulate(s, p.with_params("probe", client_cache_miss_s=0.0), loadgen_cores=1)
    dear = simulate(s, p, loadgen_cores=1)
    per = dear.loadgen_cpu_util / dear.throughput_rps - cheap.loadgen_cpu_util / cheap.throughput_rps
    # at least its ceiling's share (more where the dearer generator batches fewer requests a wake-up)
    assert per >= 0.9 * 30e-6 * costs.cache_share(p, 3000)
    assert dear.throughput_rps < cheap.throughput_rps
