"""The microbenchmarks return positive, plausible figures on this (busy, 2-core) box."""

import math

import pytest

from calibration import probes
from simkit.profile import PARAM_NAMES

pytestmark = pytest.mark.timeout(90)

# Very wide plausibility bands: orders of magnitude, so a loaded box passes and a unit slip (ms for s,
# a per-op figure that is really per-batch) does not.
PLAUSIBLE = {
    "ctx_switch_s": (1e-8, 1e-3),
    "wakeup_s": (1e-8, 5e-3),
    "thread_spawn_s": (1e-6, 0.05),
    "fork_s": (1e-5, 0.5),
    "accept_s": (1e-7, 1e-3),
    "close_s": (1e-7, 1e-3),
    "send_base_s": (1e-7, 1e-3),
    "recv_base_s": (1e-7, 1e-3),
    "send_per_byte_s": (0.0, 1e-7),
    "recv_per_byte_s": (0.0, 1e-7),
    "epoll_wait_base_s": (1e-8, 1e-3),
    "epoll_per_event_s": (0.0, 1e-4),
    "epoll_ctl_s": (1e-8, 1e-3),
    "queue_handoff_s": (1e-7, 5e-3),
    "gil_handoff_s": (0.0, 0.05),
    "parse_s": (1e-7, 1e-3),
    "rss_process_bytes": (2 * 2**20, 500 * 2**20),
    "rss_thread_bytes": (1.0, 2 * 2**20),
    "rss_conn_bytes": (16.0, 64 * 2**10),
    "rss_worker_bytes": (2**20, 500 * 2**20),
    "kernel_bytes_per_socket": (64.0, 64 * 2**10),
    "loopback_rtt_s": (1e-6, 0.05),
    "idle_wakeup_s": (0.0, 0.05),
    "idle_wakeup_tau_s": (1e-5, 1.0),
    "idle_wakeup_slow_p": (0.0, 1.0),
    "io_overshoot_s": (0.0, 0.05),
    "thread_stack_virtual_bytes": (4096.0, 2**31),
    "gil_switch_interval_s": (1e-6, 1.0),
}


def test_stable_median_stops_when_settled_and_reports_spread():
    values = iter([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 9.0])
    st = probes.stable_median(lambda: next(values), min_repeats=5, rel_tol=0.01)
    assert st.median == 1.0 and st.spread == 0.0 and st.repeats == 5


def test_run_probes_quick_gives_plausible_positive_values_with_source_probe():
    profile, results = probes.run_probes(quick=True)
    assert "probe_errors" not in profile.notes, profile.notes.get("probe_errors")
    by_name = {r.name: r for r in results}
    for name, (lo, hi) in PLAUSIBLE.items():
        assert name in by_name, f"{name} not probed"
        r = by_name[name]
        assert math.isfinite(r.value) and lo <= r.value <= hi, f"{name} = {r.value!r} outside [{lo}, {hi}]"
        assert r.repeats >= 1 and r.spread >= 0
        assert profile.params[name].source == "probe" and profile.params[name].value == r.value
        assert profile.params[name].spread == r.spread
    # Switching costs something: a context switch and a wake-up are not free.
    assert by_name["ctx_switch_s"].value > 0 and by_name["wakeup_s"].value > 0
    assert set(profile.params) == set(PARAM_NAMES)
    assert profile.fingerprint["cores"] >= 1


def test_linear_probe_fits_base_and_slope():
    out = {r.name: r for r in probes.probe_send_recv(scale=0.3)}
    assert out["send_base_s"].value > 0 and out["recv_base_s"].value > 0
    assert out["send_base_s"].detail["sizes"] == [64, 1024, 8192, 32768]


def test_pauses_from_gaps_counts_only_the_long_gaps():
    from calibration.probes import PAUSE_MIN_S, pauses_from_gaps

    gaps = [60e-6] * 100 + [PAUSE_MIN_S, 3 * PAUSE_MIN_S]
    rate, mean = pauses_from_gaps(gaps, 2.0)
    assert rate == pytest.approx(1.0)
    assert mean == pytest.approx(2 * PAUSE_MIN_S)
    assert pauses_from_gaps([60e-6], 2.0) == (0.0, 0.0)


def test_queue_handoff_is_the_pinned_cpu_cost_less_the_switch_and_restores_affinity():
    """The hand-off's CPU (both threads on one CPU) less the context switch the machine charges
    itself; the calling thread's CPU set is what it was."""
    import os

    from calibration.probes import probe_queue_handoff

    before = os.sched_getaffinity(0)
    r = probe_queue_handoff(0.2)
    assert os.sched_getaffinity(0) == before
    assert r.detail["switch_s"] > 0
    assert 0 < r.value < r.detail["hop_s"]
    assert r.value >= 0.25 * r.detail["hop_s"]


def test_wakeup_is_the_fastest_cross_core_batch_less_the_syscalls(monkeypatch):
    """A batch the host slowed down (its other vCPU descheduled) does not make the wake-up dearer:
    the figure is the fastest batch's hop less the pipe syscalls, the median is kept as hop_s."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    hops = iter([100e-6, 40e-6, 150e-6, 120e-6, 45e-6, 160e-6, 110e-6] * 10)
    monkeypatch.setattr(probes, "_pingpong_hop", lambda n, a, b: 5e-6 if a == b else next(hops))
    monkeypatch.setattr(probes, "_pipe_pair_cost", lambda n: 2e-6)
    got = {r.name: r for r in probes.probe_context_switches(0.2)}
    assert got["wakeup_s"].value == pytest.approx(40e-6 - 2e-6)
    assert got["wakeup_s"].detail["hop_s"] > 100e-6
