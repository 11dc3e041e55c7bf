"""`python -m realkit.servers <json>`, the entry realkit.runner starts servers with: it takes one JSON
object (a ModelSpec and where to listen), prints the bound port, serves, stops on SIGTERM; it refuses a
bad argument naming the field; and no realkit module imports the CLI package `serverlab`."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
import realkit_conformance_helpers as h

from realkit.servers import parse_server_argument, server_argument
from simkit.scenario import ModelSpec

ENTRY = ("-m", "realkit.servers")


def _start(argument: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *ENTRY, argument], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=h.REPO_ROOT, start_new_session=True,
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("spec", [ModelSpec.for_model("m3"), ModelSpec.for_model("m6", processes=2)],
                         ids=["m3", "m6-processes2"])
def test_json_spec_starts_prints_its_port_and_serves(spec):
    proc = _start(server_argument(spec, "127.0.0.1", 0, None))
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"no port line: {line!r}; stderr: {proc.stderr.read() if proc.poll() else ''}"
        port = int(line)
        resp = h.fetch(port, h.build_request("/", "entry-1", close=True))
        assert (resp.status, resp.body, resp.header("x-request-id")) == (200, b"ok\n", "entry-1")
        h.check_served(port, "entry", n=2)
        procs = h.group_members(proc.pid)
        assert len(procs) == spec.processes + (1 if spec.processes > 1 else 0), procs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read()
    finally:
        for p in h.group_members(proc.pid):
            p.kill()
        proc.kill()
        proc.wait(10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "argument, field",
    [
        ('{"model": {"name": "m9_nonsense"}}', "name"),
        ('{"model": {"name": "m4_reactor_workers", "pool": 0}}', "pool"),
        ('{"model": {"name": "m3_reactor", "colour": "red"}}', "colour"),
        ('{"model": {"name": "m3_reactor"}, "prot": 0}', "prot"),
        ('{"model": {"name": "m3_reactor"}, "port": 70000}', "port"),
        ('{"model": {"name": "m3_reactor"}, "cores": "0-1"}', "cores"),
        ('{"host": "127.0.0.1"}', "model"),
        ("--model m3_reactor", "argument"),
    ],
    ids=["unknown-model", "bad-knob", "unknown-model-field", "unknown-field", "bad-port", "bad-cores",
         "no-model", "flags"],
)
def test_a_bad_argument_is_refused_naming_the_field(argument, field):
    out = subprocess.run([sys.executable, *ENTRY, argument], capture_output=True, text=True, timeout=50,
                         cwd=h.REPO_ROOT)
    assert out.returncode == 2, out
    assert out.stdout.strip() == "", "printed a port for a bad argument"
    assert f"{field}:" in out.stderr, out.stderr


def test_server_argument_round_trips_every_model_field():
    spec = ModelSpec(name="m6", processes=3, dispatch="fdpass", backlog=9, keepalive_timeout_s=1.5, gil=False)
    args = parse_server_argument(server_argument(spec, "127.0.0.2", 8080, [1, 2]))
    assert (args.model, args.host, args.port, args.cores) == (spec, "127.0.0.2", 8080, (1, 2))
    assert set(json.loads(server_argument(spec))["model"]) == {f.name for f in dataclasses.fields(ModelSpec)}


def test_no_realkit_module_imports_the_cli():
    """realkit (the runner, the load generator, the servers and their entry point) must not import
    `serverlab`: the CLI sits on top of realkit, never under it."""
    code = (
        "import importlib, sys\n"
        "from simkit import registry\n"
        "mods = ['realkit', 'realkit.runner', 'realkit.loadgen', 'realkit.histogram', 'realkit.monitor',\n"
        "        'realkit.protocol', 'realkit.work', 'realkit.servers', 'realkit.servers.base',\n"
        "        'realkit.servers.__main__', *registry.modules('real')]\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        "import realkit\n"
        "realkit.measure\n"
        "bad = sorted(m for m in sys.modules if m == 'serverlab' or m.startswith('serverlab.'))\n"
        "print(len(mods), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=h.REPO_ROOT, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
