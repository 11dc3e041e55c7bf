"""External targets (realkit.target): validation, the bad-command errors (each within a bounded time,
nothing left running), the recipes of docs/external-servers.md (each a tiny real measure when its server
is installed), and the load generator's reconnect when a server closes a kept-alive connection."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import sys
import threading
import time
import warnings

import psutil
import pytest
import realkit_conformance_helpers as h

from realkit.loadgen import LoadSpec, run_load
from realkit.runner import ServerStartError, measure
from realkit.target import Target, TargetProcess
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

PY = "{python}"
CPU = tuple(sorted(os.sched_getaffinity(0)))[:1]  # a CPU this process may use, to pin the targets to
NGINX = f"{PY} -m realkit.recipes nginx --port {{port}} --workers {{workers}} --dir {{tmpdir}}"
THREADING = f"{PY} -m realkit.recipes threading --port {{port}}"
UVICORN = (f"{PY} -m uvicorn realkit.recipes:asgi_app --host 127.0.0.1 --port {{port}} --lifespan off "
           "--no-access-log --log-level warning")


def _scenario(target: Target, connections: int = 4, **knobs) -> Scenario:
    return Scenario(model=target.model_spec(**knobs), hardware=Hardware(cores=1),
                    workload=Workload(connections=connections, duration_s=0.3, warmup_s=0.2, timeout_s=5.0))


# -- validation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "field"), [
    ({"command": "server --listen 8080"}, "command"),  # no {port}
    ({"command": "server {port} {colour}"}, "command"),  # unknown placeholder
    ({"command": "server {port} {"}, "command"),  # malformed
    ({"command": "server {port} 'unclosed"}, "command"),  # shlex
    ({"command": "server {port} -w {workers}", "as_model": "m3"}, "command"),  # m3 has no processes knob
    ({"as_model": "m99"}, "as_model"),
    ({"gil": "no"}, "gil"),
    ({"path": "work"}, "path"),
    ({"path": "/a b"}, "path"),
    ({"startup_timeout_s": 0}, "startup_timeout_s"),
    ({"stop_grace_s": float("nan")}, "stop_grace_s"),
])
def test_bad_target_names_its_field(kw, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        Target(**{"command": "server --port {port}", "as_model": "m6", **kw})


def test_placeholders_take_the_models_knobs():
    m6 = Target("srv --port {port} -w {workers} --conf '{tmpdir}/a b.conf' --py {python} {{x}}", "6", gil=False)
    assert m6.as_model == ModelSpec.for_model("m6").name
    argv = m6.argv(m6.model_spec(processes=3), 8080, "/tmp/d")
    assert argv == ["srv", "--port", "8080", "-w", "3", "--conf", "/tmp/d/a b.conf", "--py", sys.executable, "{x}"]
    assert m6.model_spec().gil is False
    m4 = Target("srv {port} --threads {threads}", "m4")
    assert m4.argv(m4.model_spec(pool=8), 1, "/t")[-1] == "8"  # m4's threads are its pool
    m5 = Target("srv {port} --threads {threads}", "m5")
    assert m5.argv(m5.model_spec(threads=2), 1, "/t")[-1] == "2"


def test_check_refuses_another_model_and_realkit_work():
    target = Target("srv {port}", "m2", gil=False)
    with pytest.raises(ValueError, match="^model:"):
        target.check(Scenario(model=ModelSpec.for_model("m3")))
    with pytest.raises(ValueError, match="^cpu_us:"):
        target.check(Scenario(model=target.model_spec(), workload=Workload(cpu_us=100)))
    checked = target.check(Scenario(model=ModelSpec.for_model("m2")))  # gil True in the scenario
    assert checked.model.gil is False


# -- bad commands: a clear error within a bounded time, nothing left -------------------------------------

def _start_fails(tmp_path, script: str, match: str, timeout_s: float = 1.0) -> None:
    path = tmp_path / "server.py"
    path.write_text(script)
    target = Target(f"{PY} {path} {{port}}", "m2", startup_timeout_s=timeout_s, stop_grace_s=0.5)
    tp = TargetProcess(target, target.check(Scenario(model=target.model_spec())), CPU)
    t0 = time.monotonic()
    try:
        with pytest.raises(ServerStartError, match=match):
            tp.start()
        pids = list(tp._tree)
    finally:
        tp.close()
    assert time.monotonic() - t0 < timeout_s + 8
    assert pids and not h.running(pids)


@pytest.mark.timeout(30)
def test_a_command_that_exits_at_once(tmp_path):
    _start_fails(tmp_path, "import sys\nprint('no config here', file=sys.stderr)\nsys.exit(3)\n",
                 r"(?s)exit code 3.*no config here")


@pytest.mark.timeout(30)
def test_a_command_that_never_listens(tmp_path):
    _start_fails(tmp_path, "import time\ntime.sleep(60)\n", r"did not open 127\.0\.0\.1:\d+ within 1 s; .* no TCP port")


@pytest.mark.timeout(30)
def test_a_command_that_listens_on_another_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        other = s.getsockname()[1]
    script = (f"import os, socket, time\nif os.fork() == 0:\n    time.sleep(60)\n"  # a child: the tree is killed
              f"s = socket.socket()\ns.bind(('127.0.0.1', {other}))\ns.listen()\ntime.sleep(60)\n")
    _start_fails(tmp_path, script, rf"did not open .* listens on {other} instead")


@pytest.mark.timeout(30)
def test_a_command_that_does_not_answer_http(tmp_path):
    script = ("import socket, sys\ns = socket.socket()\ns.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen()\n"
              "while True:\n    c, _ = s.accept()\n    c.sendall(b'hello\\n')\n    c.close()\n")
    _start_fails(tmp_path, script, r"accepts connections .* HTTP status line .*hello")


@pytest.mark.timeout(30)
def test_a_server_that_ignores_sigterm_is_killed_with_its_escaped_child(tmp_path):
    """It answers HTTP, ignores SIGTERM, and has a child that left its process group (setsid): stop
    kills both after the grace period, with a warning."""
    path = tmp_path / "server.py"
    path.write_text(
        "import os, signal, sys, time, http.server as h\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n"
        "h.HTTPServer(('127.0.0.1', int(sys.argv[1])), h.SimpleHTTPRequestHandler).serve_forever()\n")
    target = Target(f"{PY} {path} {{port}}", "m1", startup_timeout_s=10, stop_grace_s=0.5)
    tp = TargetProcess(target, target.check(Scenario(model=target.model_spec())), CPU)
    try:
        tp.start()
        time.sleep(0.2)
        pids = [p.pid for p in tp.tree()]
        assert len(pids) == 2
        t0 = time.monotonic()
        with pytest.warns(RuntimeWarning, match=r"did not stop within 0\.5 s of SIGTERM: killed \(SIGKILL\) 2"):
            assert tp.stop() is None
        assert time.monotonic() - t0 < 8
    finally:
        tp.close()
    assert not h.running(pids)


@pytest.mark.timeout(30)
def test_a_target_that_answers_the_probe_with_an_error_is_warned_about(tmp_path):
    path = tmp_path / "server.py"
    path.write_text("import sys, http.server as h\n"  # no do_GET: every GET gets a 501
                    "h.HTTPServer(('127.0.0.1', int(sys.argv[1])), h.BaseHTTPRequestHandler).serve_forever()\n")
    target = Target(f"{PY} {path} {{port}}", "m1", startup_timeout_s=10, stop_grace_s=2, path="/missing")
    tp = TargetProcess(target, target.check(Scenario(model=target.model_spec())), CPU)
    try:
        with pytest.warns(RuntimeWarning, match=r"answered GET /missing with .HTTP/1.0 501"):
            tp.start()
        assert tp.stop() == 0  # it dies of the SIGTERM in time: a clean stop
    finally:
        tp.close()


# -- recipes (docs/external-servers.md) -----------------------------------------------------------------

def _measure_recipe(target: Target, **knobs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "sharing CPUs", perf counters
        result = measure(_scenario(target, **knobs), target=target, loadgen_processes=0)
    assert result.completed > 0 and result.throughput_rps > 0
    assert result.errors_reset == result.errors_timeout == result.errors_refused == 0
    assert result.failure == "", result.failure  # no_graceful_stop, http_errors, server_died ...
    assert result.scenario.workload.resp_bytes == 3  # "ok\n": the body the target answered with
    assert result.scenario.model.gil is target.gil
    assert not h.running([p.pid for p in psutil.Process().children(recursive=True)
                      if any(k in " ".join(p.cmdline()) for k in ("nginx", "recipes", "uvicorn"))])
    return result


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_recipe_nginx_prefork_without_gil():
    result = _measure_recipe(Target(NGINX, "m6", gil=False), processes=2)
    assert result.processes_peak == 3  # the master and two workers


@pytest.mark.timeout(60)
def test_recipe_threading_http_server():
    result = _measure_recipe(Target(THREADING, "m2"), connections=4)
    assert result.processes_peak == 1 and result.threads_peak >= 5  # the main thread and one per connection


@pytest.mark.timeout(60)
@pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="uvicorn is not installed")
def test_recipe_uvicorn_asgi_reactor():
    result = _measure_recipe(Target(UVICORN, "m3"))
    assert result.processes_peak == 1


# -- the load generator and a server that closes a kept-alive connection without saying so ---------------

def _close_after_one_server(sock: socket.socket, stop: threading.Event) -> None:
    """Answers one request per connection (HTTP/1.1, no `Connection: close`), then closes it (FIN)."""
    sock.settimeout(0.05)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        with conn, contextlib.suppress(OSError):  # the generator aborts its connections at its end
            conn.settimeout(1.0)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if not data:
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            time.sleep(0.001)  # the client sends its next request on it first
            conn.shutdown(socket.SHUT_WR)  # a clean FIN (close() with unread bytes would send a reset)
            while conn.recv(4096):
                pass


@pytest.mark.timeout(30)
def test_a_closed_keepalive_connection_is_a_reconnect_not_an_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        stop = threading.Event()
        thread = threading.Thread(target=_close_after_one_server, args=(sock, stop), daemon=True)
        thread.start()
        try:
            report = run_load(LoadSpec(url=f"http://127.0.0.1:{sock.getsockname()[1]}/", processes=0,
                                       workload=Workload(connections=2, duration_s=0.3, warmup_s=0.0)))
        finally:
            stop.set()
            thread.join(5)
    assert report.completed > 10
    assert report.errors == 0, report.summary()
    assert report.connects >= report.completed  # a new connection for each answer


# -- the CLI ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--target", "srv {port}"], "as: --target needs --as MODEL"),
    (["--target", "srv", "--as", "m2"], "command: no {port}"),
    (["--target", "srv {port} {workers}", "--as=m3"], "command: {workers} needs a processes knob"),
    (["--model", "m3", "--path", "/x"], "path: only with --target"),
    (["--target", "srv {port}", "--as", "m6", "--gil", "--no-gil"], "gil: --gil and --no-gil"),
])
def test_cli_refuses_a_bad_target(args, message):
    from click.testing import CliRunner

    from serverlab.cli import main

    result = CliRunner().invoke(main, ["measure", *args])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.timeout(30)
def test_cli_says_what_a_bad_target_did():
    from click.testing import CliRunner

    from serverlab.cli import main

    cmd = f"{PY} -c \"import sys; print('bad flag', file=sys.stderr); sys.exit(3)\" {{port}}"
    result = CliRunner().invoke(main, ["measure", "--target", cmd, "--as", "m2", "--cores", "1",
                                       "--duration", "0.2", "--warmup", "0"])
    assert result.exit_code == 1 and "exit code 3" in result.output and "bad flag" in result.output, result.output
