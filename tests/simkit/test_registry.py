"""The architecture registry: names, knobs, sizing, thread kinds, and plug-ins."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simkit import costs, registry, simulate
from simkit.profile import CostProfile
from simkit.registry import Knob, Threads
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

ROOT = Path(__file__).resolve().parents[2]


def test_names_numbers_and_short_names_resolve():
    for arch in registry.architectures():
        assert registry.resolve(arch.number) == arch.name
        assert registry.resolve(str(arch.number)) == arch.name
        assert registry.resolve(arch.short) == arch.name
        assert registry.resolve(arch.name) == arch.name
    assert [a.number for a in registry.architectures()] == sorted(a.number for a in registry.architectures())
    with pytest.raises(ValueError, match="unknown model 'm99'"):
        registry.resolve("m99")


@pytest.mark.parametrize("name", registry.names())
def test_each_architecture_has_both_halves(name):
    arch = registry.get(name)
    assert hasattr(importlib.import_module(arch.sim_module_name), "Model")
    assert callable(importlib.import_module(arch.real_module_name).serve)
    assert arch.summary and arch.colour.startswith("#")


def test_knob_minimum_is_checked_by_the_contract():
    arch = next(a for a in registry.architectures() if any(k.minimum > 0 and k.field == "pool" for k in a.knobs))
    with pytest.raises(ValueError, match=r"^pool: "):
        ModelSpec(name=arch.name, pool=0)
    assert ModelSpec.for_model(arch.name).pool == arch.knob_defaults()["pool"]
    assert ModelSpec.for_model(arch.name, pool=7).pool == 7
    with pytest.raises(ValueError, match=r"^name: unknown model"):
        ModelSpec.for_model("nope")


def test_sizing_follows_cores_and_rules():
    for arch in registry.architectures():
        for k in arch.knobs:
            sized = arch.sized(16)[k.field]
            assert sized == max(k.min_sized, round(k.per_core * 16))
            rules = {f"{arch.short}_{k.field}_per_core": 0.5, f"{arch.short}_{k.field}_min": 3}
            assert arch.sized(16, rules)[k.field] == 8
            assert arch.sized(2, rules)[k.field] == 3
            assert f"{arch.short}_{k.field}_per_core" in registry.sizing_keys()
    assert all(k.startswith("m") for k in registry.sizing_keys())


def _closed(name: str, connections: int, **work) -> Scenario:
    return Scenario(model=ModelSpec.for_model(name, threads=None), hardware=Hardware(cores=2),
                    workload=Workload(connections=connections, duration_s=0.2, warmup_s=0.05, **work))


@pytest.mark.parametrize("name", registry.names())
def test_thread_and_process_counts_match_the_simulator(name):
    """The registry's thread kinds count what the simulated server runs (keep-alive clients: one
    connection each; a thread per request is counted at its peak by the simulator, so only >=)."""
    arch = registry.get(name)
    s = _closed(name, 20, cpu_us=50)
    r = simulate(s, CostProfile.default())
    assert r.processes_peak == arch.processes(s.model)
    per_request = any(t.count == "in_service" for t in arch.threads)
    counted = arch.threads_peak(s.model, 20, 0.0)
    if arch.one_connection_at_a_time or per_request:
        assert r.threads_peak >= counted
    else:
        assert r.threads_peak == counted


def test_derived_roles():
    """Which servers run one worker thread, and whose workers contend for one GIL."""
    def roles(name: str, **knobs) -> tuple[bool, bool]:
        arch, spec = registry.get(name), ModelSpec.for_model(name, **knobs)
        return arch.single_thread(spec), arch.shared_gil(spec)

    assert roles("m1_iterative") == roles("m3_reactor") == (True, False)
    assert roles("m2_thread_per_conn") == roles("m7_reactor_spawn", threads=4) == (False, True)
    assert roles("m4_reactor_workers", pool=4) == roles("m5_multi_reactor", threads=4) == (False, True)
    assert roles("m5_multi_reactor", threads=1) == roles("m6_prefork", processes=1) == (True, False)
    assert roles("m6_prefork", processes=4) == (False, False)  # processes: a GIL each
    assert registry.get("m6_prefork").connection_processes(ModelSpec.for_model("m6", processes=4)) == 4


def test_entries_are_validated():
    base = registry.get("m3_reactor")
    with pytest.raises(ValueError, match="^name: "):
        dataclasses.replace(base, name="reactor")
    with pytest.raises(ValueError, match="^colour: "):
        dataclasses.replace(base, name="m90_x", colour="blue")
    with pytest.raises(ValueError, match="^threads: count 'workers'"):
        dataclasses.replace(base, name="m90_x", threads=(Threads("loop", "workers", work=True),))
    with pytest.raises(ValueError, match="^threads: .*work=True"):
        dataclasses.replace(base, name="m90_x", threads=(Threads("loop", 1),))
    with pytest.raises(ValueError, match="^name: number 3 is taken"):
        registry.register(dataclasses.replace(base, name="m3_other"))


def test_register_and_unregister():
    arch = dataclasses.replace(registry.get("m5_multi_reactor"), name="m91_copy", colour="#123456",
                               knobs=(Knob("threads", default=3),))
    registry.register(arch)
    try:
        assert "m91_copy" in registry.names() and registry.resolve(91) == "m91_copy"
        assert ModelSpec.for_model("m91").threads == 3
        assert arch.sim_module_name == "simkit.models.m91_copy"
    finally:
        registry.unregister("m91_copy")
    assert "m91_copy" not in registry.names()


def test_plugins_from_the_environment(tmp_path):
    """A module named in SERVERLAB_ARCHITECTURES registers its entry in every process that reads the registry."""
    (tmp_path / "my_arch.py").write_text(textwrap.dedent("""
        import dataclasses
        from simkit import registry
        registry.register(dataclasses.replace(registry.get("m3_reactor"), name="m92_plugged", colour="#abcdef"))
    """))
    env = dict(os.environ, SERVERLAB_ARCHITECTURES="my_arch",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    code = "import json; from simkit.scenario import ModelSpec; from simkit import registry; " \
           "print(json.dumps([registry.names()[-1], ModelSpec(name=92).name]))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == ["m92_plugged", "m92_plugged"]


def test_response_header_bytes_are_what_realkit_sends():
    from realkit.protocol import RequestParser, response_bytes

    wl = Workload()
    parser = RequestParser()
    parser.feed(f"GET {wl.work_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    sent = response_bytes(parser.next_request())
    assert len(sent) - wl.resp_bytes == costs.RESP_HEADER_BYTES


def test_models_price_requests_with_the_cost_module():
    """The simulated request path and the analytic demands charge the same recv and send."""
    import random

    import simpy

    s = _closed("m3_reactor", 1, cpu_us=10)
    p = CostProfile.default()
    model = importlib.import_module(registry.get("m3_reactor").sim_module_name).Model(simpy.Environment(), s, p,
                                                                                        random.Random(1))
    assert model.send_s == costs.send_s(p, s.workload) and model.recv_s == costs.recv_s(p, s.workload)
    d = costs.demands(s, p)
    assert d.syscall_s == pytest.approx(costs.recv_s(p, s.workload) + costs.send_s(p, s.workload)
                                        + p["epoll_wait_base_s"])
