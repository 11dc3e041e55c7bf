"""m8_proactor's mechanisms in the simulator: the ring's costs replace the readiness round trip, a
batch's answers leave together at the next io_uring_enter, and each connection pins a receive buffer."""

from __future__ import annotations

import dataclasses

import pytest

from realkit.servers import m8_proactor as real_m8
from simkit import simulate
from simkit.models import m8_proactor as sim_m8
from simkit.profile import CostProfile, Param
from simkit.scenario import Scenario

pytestmark = pytest.mark.timeout(120)

BASE = Scenario().replace(duration_s=0.5, warmup_s=0.1, connections=16, cores=1)


def _profile(**values: float) -> CostProfile:
    base = CostProfile.default()
    params = dict(base.params)
    params.update({k: Param(v) for k, v in values.items()})
    return dataclasses.replace(base, params=params)


def _same_costs_as_m3() -> CostProfile:
    """The ring priced exactly as m3's epoll_wait + recv() + send(): what is left is the mechanism."""
    p = CostProfile.default()
    return _profile(uring_enter_s=p["epoll_wait_base_s"], uring_recv_s=p["recv_base_s"] + p["epoll_per_event_s"],
                    uring_send_s=p["send_base_s"])


def test_the_ring_costs_replace_epoll_and_the_socket_calls():
    slow_epoll = _profile(epoll_wait_base_s=200e-6, recv_base_s=100e-6, send_base_s=100e-6)
    slow_ring = _profile(uring_enter_s=200e-6, uring_recv_s=100e-6, uring_send_s=100e-6)
    plain = simulate(BASE.replace(model="m8_proactor"), CostProfile.default())
    assert simulate(BASE.replace(model="m8_proactor"), slow_epoll).throughput_rps == pytest.approx(
        plain.throughput_rps, rel=0.02)
    assert simulate(BASE.replace(model="m8_proactor"), slow_ring).throughput_rps < 0.5 * plain.throughput_rps
    assert simulate(BASE.replace(model="m3_reactor"), slow_epoll).throughput_rps < 0.5 * plain.throughput_rps


def test_a_batchs_answers_leave_together_at_the_next_enter():
    """Priced the same as m3, m8 answers a lone request as fast, but under load each answer waits for
    the rest of its batch to be served (m3 sends each as soon as it is ready)."""
    profile = _same_costs_as_m3()
    light = BASE.replace(mode="open", rate_rps=50, connections=8, cpu_us=1000, duration_s=2.0)
    heavy = light.replace(rate_rps=850)
    lone = [simulate(light.replace(model=m), profile).latency_p50_s for m in ("m3_reactor", "m8_proactor")]
    assert lone[1] == pytest.approx(lone[0], rel=0.05)
    busy = [simulate(heavy.replace(model=m), profile).latency_mean_s for m in ("m3_reactor", "m8_proactor")]
    assert busy[1] > 1.1 * busy[0]


def test_each_connection_pins_its_receive_buffer():
    assert sim_m8.RECV_BUFFER_BYTES == real_m8.RECV_BYTES
    idle = BASE.replace(connections=4, idle_connections=2000)
    m3, m8 = (simulate(idle.replace(model=m), CostProfile.default()) for m in ("m3_reactor", "m8_proactor"))
    assert m8.rss_peak_bytes - m3.rss_peak_bytes == pytest.approx(2004 * sim_m8.RECV_BUFFER_BYTES, rel=0.01)


def test_loops_get_connections_by_hash_and_share_one_gil():
    two = simulate(BASE.replace(model="m8_proactor", threads=2, cores=2, gil_us=200), CostProfile.default())
    one = simulate(BASE.replace(model="m8_proactor", threads=1, cores=2, gil_us=200), CostProfile.default())
    assert two.threads_peak == 2 and two.processes_peak == 1
    assert two.throughput_rps < 1.1 * one.throughput_rps  # gil_us work does not scale across threads
