"""External targets: measure a server that is not one of realkit's own (nginx, a threaded Python server,
uvicorn, a C/Go/Rust service) with the same load generator, process-tree monitor and Result.

A `Target` names a command line and the architecture it has (`as_model`, a simkit.registry model, and
`gil`: whether its runtime has a global lock), so that a real run of it and a simulation of the same
Scenario compare like with like. `TargetProcess` runs it: a free loopback port, the command started
without a shell in its own session pinned to the scenario's CPUs (runner._server_preexec, as realkit's
servers), ready once 127.0.0.1:port answers one GET of `path` with an HTTP status line, stopped with
SIGTERM to its process group and SIGKILL after `stop_grace_s`, and nothing of its process tree left.

Placeholders in the command, filled per run: {port} (required), {workers} (the model's `processes`
knob), {threads} (its `threads` or `pool` knob), {python} (this interpreter), {tmpdir} (an empty
directory for config files, pid files and logs, removed after the run). A literal brace is {{ or }}.
A server that cannot start raises runner.ServerStartError saying what happened: it exited (its code
and output tail), it never listened on the port (and which ports its tree listens on instead), or it
listened but did not answer HTTP.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import psutil

from realkit.runner import ServerStartError, _server_preexec, file_tail
from simkit import registry
from simkit.scenario import ModelSpec, Scenario

__all__ = ["Target", "TargetProcess", "PLACEHOLDERS"]

# Placeholder -> the ModelSpec knobs that may fill it (the first the model has), or None: not a knob.
PLACEHOLDERS: dict[str, tuple[str, ...] | None] = {
    "port": None,
    "workers": ("processes",),
    "threads": ("threads", "pool"),
    "python": None,
    "tmpdir": None,
}
# Work a realkit server reads from the query string; an external server does its own work instead.
_WORK_FIELDS = ("cpu_us", "gil_us", "io_us")


def _placeholders(command: str) -> set[str]:
    """The {names} used in `command`; ValueError naming `command` for a malformed or unknown one."""
    try:
        fields = {name for _, name, spec, conv in string.Formatter().parse(command) if name is not None}
    except ValueError as exc:
        raise ValueError(f"command: {exc} in {command!r} (write a literal brace as {{{{ or }}}})") from None
    unknown = sorted(f for f in fields if f not in PLACEHOLDERS)
    if unknown:
        raise ValueError(f"command: unknown placeholder {{{unknown[0]}}}; known: "
                         f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    return fields


def _knob_for(arch: registry.Architecture, placeholder: str) -> str | None:
    fields = {k.field for k in arch.knobs}
    return next((f for f in PLACEHOLDERS[placeholder] or () if f in fields), None)


@dataclass(frozen=True)
class Target:
    """An external server: a command line, the architecture it has, and how to reach and stop it."""

    command: str
    as_model: str
    gil: bool = True
    path: str = "/"
    startup_timeout_s: float = 30.0
    stop_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.command, str) or not self.command.strip():
            raise ValueError(f"command: expected a command line with {{port}}, got {self.command!r}")
        try:
            object.__setattr__(self, "as_model", registry.resolve(self.as_model))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"as_model: {exc}") from None
        used = _placeholders(self.command)
        if "port" not in used:
            raise ValueError(f"command: no {{port}} placeholder in {self.command!r}: the server must listen on "
                             "the port it is given")
        arch = registry.get(self.as_model)
        for name in sorted(used):
            if PLACEHOLDERS[name] and _knob_for(arch, name) is None:
                raise ValueError(f"command: {{{name}}} needs a {' or '.join(PLACEHOLDERS[name])} knob, and "
                                 f"{arch.name} has {', '.join(k.field for k in arch.knobs) or 'none'}")
        try:
            argv = shlex.split(self.command)
        except ValueError as exc:
            raise ValueError(f"command: {exc} in {self.command!r}") from None
        if not argv:
            raise ValueError(f"command: empty command line {self.command!r}")
        if not isinstance(self.gil, bool):
            raise ValueError(f"gil: expected true or false, got {self.gil!r}")
        if not isinstance(self.path, str) or not self.path.startswith("/") or any(c.isspace() for c in self.path):
            raise ValueError(f"path: expected a request target starting with / and without spaces, got {self.path!r}")
        for name in ("startup_timeout_s", "stop_grace_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected seconds > 0, got {value!r}")

    def model_spec(self, **knobs) -> ModelSpec:
        """The ModelSpec of this target's architecture (registry defaults for the knobs left out)."""
        return ModelSpec.for_model(self.as_model, gil=self.gil, **knobs)

    def argv(self, model: ModelSpec, port: int, tmpdir: str) -> list[str]:
        """The command split as a shell would (no shell runs it), each word's placeholders filled."""
        arch = registry.get(self.as_model)
        values = {"port": port, "python": sys.executable, "tmpdir": tmpdir}
        for name, knobs in PLACEHOLDERS.items():
            if knobs and (knob := _knob_for(arch, name)) is not None:
                values[name] = getattr(model, knob)
        return [word.format(**values) for word in shlex.split(self.command)]

    def check(self, scenario: Scenario) -> Scenario:
        """`scenario` as a run of this target: its model must be as_model (its knobs fill the
        placeholders), it asks for no realkit work (the target does its own), and its gil is the target's.
        ValueError names the field."""
        if not isinstance(scenario, Scenario):
            raise ValueError(f"scenario: expected a Scenario, got {type(scenario).__name__}")
        if scenario.model.name != self.as_model:
            raise ValueError(f"model: the scenario's model is {scenario.model.name} but the target is run as "
                             f"{self.as_model} (build it with target.model_spec(...))")
        for name in _WORK_FIELDS:
            if getattr(scenario.workload, name):
                raise ValueError(f"{name}: an external target does its own work and ignores realkit's work "
                                 "parameters; set it to 0")
        return scenario.replace(gil=self.gil)

    def process(self, scenario: Scenario, cpus: tuple[int, ...]) -> TargetProcess:
        return TargetProcess(self, self.check(scenario), cpus)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick; another process could take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http_probe(port: int, path: str, timeout_s: float) -> tuple[bytes, int | None] | None:
    """One `GET path` on a fresh connection: (status line, Content-Length or None); None when nothing
    accepts the connection. Raises ValueError(first bytes) when what answers is not HTTP."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    except OSError:
        return None
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"HTTP/1.") or len(line) < 12 or not line[9:12].isdigit():
        raise ValueError(repr(data[:80]))
    length = None
    for header in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    return line, length


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class TargetProcess:
    """One run of a Target; the same interface as runner.ServerProcess (start, alive, stop, stderr_tail,
    close, proc, port, scenario). After start(), `scenario` records the response body size the target
    answered the probe with (Content-Length), so a simulation of it sends what the server sent."""

    def __init__(self, target: Target, scenario: Scenario, cpus: tuple[int, ...]) -> None:
        self.target = target
        self.scenario = scenario
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.status_line = b""
        self._output = tempfile.TemporaryFile()
        self._tmpdir = tempfile.mkdtemp(prefix="serverlab-target-")
        self._tree: dict[int, psutil.Process] = {}  # every process of the tree seen so far

    def stderr_tail(self, n: int = 2000) -> str:
        """The last `n` bytes of what the target wrote (stdout and stderr together)."""
        return file_tail(self._output, n)

    def _fail(self, what: str) -> ServerStartError:
        self.kill()
        tail = self.stderr_tail().strip()
        return ServerStartError(f"target {self.target.command!r}: {what}" + (f"\noutput:\n{tail}" if tail else ""))

    def start(self) -> int:
        self.port = free_port()
        argv = self.target.argv(self.scenario.model, self.port, self._tmpdir)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=self._tmpdir,
                preexec_fn=_server_preexec(self.cpus, self.scenario.hardware.fd_limit),
            )
        except OSError as exc:
            raise ServerStartError(f"target {self.target.command!r}: cannot run {argv[0]!r} ({exc.strerror})") from None
        timeout_s = self.target.startup_timeout_s
        deadline = time.monotonic() + timeout_s
        not_http = None
        while True:
            self.tree()
            code = self.proc.poll()
            if code is not None:
                raise self._fail(f"exited with exit code {code} before it answered on 127.0.0.1:{self.port}")
            try:
                probe = _http_probe(self.port, self.target.path, min(2.0, max(0.1, deadline - time.monotonic())))
            except ValueError as exc:
                probe, not_http = None, str(exc)
            if probe is not None:
                self.status_line, length = probe
                if self.status_line[9:10] != b"2":
                    warnings.warn(f"target {self.target.command!r} answered GET {self.target.path} with "
                                  f"{self.status_line.decode('latin-1')!r}: every request will count as an http "
                                  "error (is --path right?)", RuntimeWarning, stacklevel=2)
                if length is not None and length != self.scenario.workload.resp_bytes:
                    self.scenario = self.scenario.replace(resp_bytes=length)
                return self.port
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not_http is not None:
            raise self._fail(f"accepts connections on 127.0.0.1:{self.port} but did not answer GET "
                             f"{self.target.path} with an HTTP status line within {timeout_s:g} s (got {not_http})")
        ports = self.listening_ports()
        where = (f"its process tree listens on {', '.join(map(str, ports))} instead: does the command put "
                 "{port} where the server reads its port?" if ports else "its process tree listens on no TCP port")
        raise self._fail(f"did not open 127.0.0.1:{self.port} within {timeout_s:g} s; {where}")

    def tree(self) -> list[psutil.Process]:
        """The live processes of the target's tree (the root and its descendants), remembered for stop."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.Error:
            found = []
        for p in found:
            self._tree.setdefault(p.pid, p)
        return [p for p in self._tree.values() if _alive(p)]

    def listening_ports(self) -> list[int]:
        """TCP ports any process of the tree listens on."""
        ports = set()
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                ports |= {c.laddr.port for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        return sorted(ports)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_tree(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # its session's group (runner._server_preexec: setsid)
        for p in self.tree():  # and any that left the group (daemonized, setsid)
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM to the whole tree; SIGKILL to what is left after the grace period (a RuntimeWarning
        says so). Returns 0 when the tree ended within the grace period (whatever its exit code: a server
        that dies of the SIGTERM has stopped as asked), None when it had to be killed."""
        if self.proc is None:
            return None
        grace = self.target.stop_grace_s if timeout_s is None else timeout_s
        self.tree()
        self._signal_tree(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()
            if not self.tree():
                return 0
            time.sleep(0.02)
        left = self.tree()
        warnings.warn(
            f"target {self.target.command!r} did not stop within {grace:g} s of SIGTERM: killed "
            f"(SIGKILL) {len(left)} process(es), pids {', '.join(str(p.pid) for p in left)}",
            RuntimeWarning, stacklevel=2,
        )
        self.kill()
        return None

    def kill(self) -> None:
        """SIGKILL the whole tree and wait until none of it runs (bounded)."""
        if self.proc is None:
            return
        self.tree()
        self._signal_tree(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)
        psutil.wait_procs(self.tree(), timeout=5.0)

    def close(self) -> None:
        """Leave nothing: kill what still runs, remove {tmpdir}, close the output file."""
        if self.proc is not None and self.tree():
            self.kill()
        self._output.close()
        shutil.rmtree(self._tmpdir, ignore_errors=True)

