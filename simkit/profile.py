"""CostProfile: every per-operation cost the simulator uses, each with uncertainty and provenance.

Calibration (calibration/probes.py, calibration/fit.py) writes one per host as JSON, keyed by a host
fingerprint. `CostProfile.default()` holds published / typical Linux + CPython figures and is
labelled uncalibrated: every parameter's source is "default" until a probe or a fit replaces it.

Use in models: `profile["ctx_switch_s"]` is the value (a float); `profile.params["ctx_switch_s"]`
is the Param with value, sd and source.

Which profile a run uses is one rule, `resolve_profile(profile=None)`: an explicit profile (a
CostProfile or a path) > the path in $SERVERLAB_PROFILE > this host's calibrated profile at the
per-user location (`default_profile_path()`: $SERVERLAB_PROFILE_DIR, else
$XDG_DATA_HOME/serverlab/profiles, else ~/.local/share/serverlab/profiles; never the working
directory) > the built-in profile, with an UncalibratedProfileWarning. A profile carries its
provenance: `label` ("vm-2c 2026-12-01 #1a2b3c4d": host, calibration date, a short id of its
values) and `origin` (where the rule found it); every simulated Result records the label.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import os
import platform
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from simkit import registry

PARAM_SOURCES = ("default", "probe", "fit")
PROFILE_ENV = "SERVERLAB_PROFILE"  # a profile JSON to use instead of this host's
PROFILE_DIR_ENV = "SERVERLAB_PROFILE_DIR"  # where calibrated profiles live (one <host>.json each)
# Where resolve_profile found a profile ("" for one made in code and passed around directly).
ORIGINS = ("explicit", "env", "host", "built-in")

# name -> (default value, what it is). Defaults: typical x86-64 Linux 6.x with CPython 3.11 on
# loopback; order of magnitude from lmbench-style figures and our own early measurements.
PARAM_DOCS: dict[str, tuple[float, str]] = {
    "ctx_switch_s": (3e-6, "a core switching to a different thread (same core), direct + cache cost"),
    "wakeup_s": (6e-6, "waking a thread that will run on another core (IPI + scheduler)"),
    "time_slice_s": (3e-3, "scheduler time slice when more threads are runnable than cores"),
    "thread_spawn_s": (30e-6, "starting a Python thread, the parent's part: Thread(), start() (pthread_create), join(); GIL held"),
    "thread_boot_s": (30e-6, "starting a Python thread, the new thread's part: its bootstrap (start() waits for it) and exit; GIL held"),
    "fork_s": (1.5e-3, "fork of a Python worker process"),
    "accept_s": (10e-6, "accept() syscall + Python socket object"),
    "close_s": (10e-6, "close() of a connection's socket after the client's FIN (teardown), from Python"),
    "recv_base_s": (5e-6, "recv() syscall fixed cost, from Python"),
    "recv_per_byte_s": (0.2e-9, "recv() cost per byte"),
    "send_base_s": (9e-6, "send() syscall fixed cost (loopback: includes the peer's receive path)"),
    "send_per_byte_s": (0.3e-9, "send() cost per byte"),
    "epoll_wait_base_s": (4e-6, "epoll_wait / selector.select fixed cost, from Python"),
    "epoll_per_event_s": (1.5e-6, "per ready event returned, incl. Python dispatch"),
    "epoll_ctl_s": (2e-6, "epoll_ctl register/modify/unregister"),
    "queue_handoff_s": (15e-6, "CPU of a hand-off between Python threads through a queue (its wake-up and switch are the machine's)"),
    "parse_s": (20e-6, "parse one request and build its response in Python (holds the GIL)"),
    "gil_switch_interval_s": (5e-3, "sys.getswitchinterval(): a waiter forces the holder to drop the GIL"),
    "gil_handoff_s": (8e-6, "cost of passing the GIL to another thread (condvar signal + wake-up)"),
    "cpu_work_scale": (1.0, "actual / requested duration of cpu_us work (GIL released)"),
    "gil_work_scale": (1.0, "actual / requested duration of gil_us work (GIL held)"),
    "cpu_work_cv": (0.0, "coefficient of variation of one request's cpu_us work duration (the box's jitter)"),
    "gil_work_cv": (0.0, "coefficient of variation of one request's gil_us work duration (the box's jitter)"),
    "io_overshoot_s": (60e-6, "extra time a time.sleep(io_us) takes (timer slack, wake-up)"),
    "client_cpu_per_request_s": (25e-6, "load generator CPU per request sent and answered (simkit.clients)"),
    # 0 until probed: the generator's loop wake-up and connection costs (calibration.probes.probe_loadgen).
    "client_cpu_per_wake_s": (0.0, "load generator CPU per wake-up of its event loop that sends something"),
    "client_cpu_per_conn_s": (0.0, "load generator CPU per connection: connect, and the close of the last"),
    "loopback_rtt_s": (25e-6, "TCP round trip on loopback, no work"),
    # 0 until probed: what a recv() / send() and the generator's request cost more once the live
    # connections' state no longer fits a core's caches (simkit.costs.cache_share).
    "syscall_cache_miss_s": (0.0, "extra CPU of one recv() or send() with many live connections: the ceiling "
                                  "of syscall_cache_miss_s x (1 - exp(-connections / cache_knee_conns))"),
    "client_cache_miss_s": (0.0, "the load generator's extra CPU per request with many live connections "
                                 "beyond its recv() and send()'s (the same share of its ceiling)"),
    "cache_knee_conns": (1000.0, "live connections at which that share reaches 1 - 1/e"),
    # 0 until probed: the delay depends on the box (idle states, hypervisor) more than any other cost.
    "idle_wakeup_s": (0.0, "extra delay to run a thread woken on a core that has long been idle (idle "
                           "states, a VM's halted vCPU, cold caches): the ceiling of idle_wakeup_s x "
                           "(1 - exp(-idle / idle_wakeup_tau_s))"),
    "idle_wakeup_tau_s": (5e-3, "how fast that delay grows with the core's idle time"),
    "idle_wakeup_slow_p": (0.0, "share of wake-ups from a long idle that are slow (a VM's halted vCPU the "
                                "host has descheduled): slow_p x (1 - exp(-idle / idle_wakeup_tau_s))"),
    "idle_wakeup_slow_s": (1e-3, "mean extra delay of a slow wake-up (exponentially distributed)"),
    # 0 until probed: a busy core's pauses long enough to matter (>= calibration.probes.PAUSE_MIN_S).
    "core_pauses_per_s": (0.0, "pauses of a busy core per second (interrupts, a VM's host running others)"),
    "core_pause_mean_s": (0.0, "mean length of one such pause (exponentially distributed)"),
    "rss_process_bytes": (20 * 2**20, "RSS of an idle Python server process"),
    "rss_worker_bytes": (16 * 2**20, "RSS a worker forked from the server adds (its parent's anonymous pages "
                                     "counted again, only the file pages it touches)"),
    "rss_thread_bytes": (64 * 2**10, "RSS added by one idle Python thread"),
    "thread_stack_virtual_bytes": (8 * 2**20, "virtual stack reserved per thread"),
    "rss_conn_bytes": (3 * 2**10, "user-space RSS per open connection (socket object, buffers)"),
    "kernel_bytes_per_socket": (4 * 2**10, "kernel memory per open TCP socket, idle"),
}
# ... and the primitive costs only one architecture has, from its registry entry (m8's ring).
ARCHITECTURE_PARAMS: dict[str, tuple[float, str]] = {
    name: (default, doc) for arch in registry.BUILTIN for name, default, doc in arch.params}
PARAM_DOCS.update(ARCHITECTURE_PARAMS)
PARAM_NAMES: tuple[str, ...] = tuple(PARAM_DOCS)
# Parameters added after profiles were first written: a profile without them still loads, with the
# default value (source "default"), so a team's saved calibration survives an upgrade. Any other
# missing parameter means a damaged file and is an error.
ADDED_LATER: tuple[str, ...] = ("cpu_work_cv", "gil_work_cv", "idle_wakeup_s", "idle_wakeup_tau_s",
                                "close_s", "idle_wakeup_slow_p", "idle_wakeup_slow_s",
                                "rss_worker_bytes", "client_cpu_per_wake_s", "client_cpu_per_conn_s",
                                "core_pauses_per_s", "core_pause_mean_s", "syscall_cache_miss_s",
                                "client_cache_miss_s", "cache_knee_conns", *ARCHITECTURE_PARAMS)


@dataclass(frozen=True)
class Param:
    value: float
    sd: float = 0.0
    source: str = "default"
    spread: float | None = None  # probes: relative spread (IQR / median) of the repeats

    def __post_init__(self) -> None:
        for name in ("value", "sd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.source not in PARAM_SOURCES:
            raise ValueError(f"source: must be one of {', '.join(PARAM_SOURCES)}, got {self.source!r}")


def host_fingerprint() -> dict[str, Any]:
    """What makes one box's costs differ from another's."""
    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count() or 1,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def host_name(fingerprint: dict[str, Any] | None = None) -> str:
    """A file-name-safe label for a host: hostname-cores."""
    fp = fingerprint or host_fingerprint()
    node = "".join(c if c.isalnum() or c in "-_" else "-" for c in platform.node() or "host")
    return f"{node}-{fp['cores']}c"


@dataclass(frozen=True)
class CostProfile:
    params: dict[str, Param]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    calibrated: bool = False
    validation: list[dict[str, Any]] = field(default_factory=list)  # held-out error table rows
    failed_runs: list[dict[str, Any]] = field(default_factory=list)  # real runs that failed twice
    notes: dict[str, Any] = field(default_factory=dict)
    # Provenance, not part of the costs (equal costs compare equal wherever they came from).
    origin: str = field(default="", compare=False)  # one of ORIGINS, or "" (made in code)
    path: str = field(default="", compare=False)  # the file it was loaded from ("" if none)
    file_date: str = field(default="", compare=False, repr=False)  # the file's mtime (UTC date)

    def __post_init__(self) -> None:
        if self.origin not in ("", *ORIGINS):
            raise ValueError(f"origin: must be one of {', '.join(ORIGINS)} or empty, got {self.origin!r}")
        if not isinstance(self.params, dict):
            raise ValueError(f"params: expected a mapping of parameter name to Param, got {type(self.params).__name__}")
        missing = [n for n in PARAM_NAMES if n not in self.params]
        if missing:
            raise ValueError(f"{missing[0]}: missing from the profile's params")
        unknown = [n for n in self.params if n not in PARAM_DOCS]
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown profile parameter; known: {', '.join(PARAM_NAMES)}")
        for name, p in self.params.items():
            if not isinstance(p, Param):
                raise ValueError(f"{name}: expected a Param, got {type(p).__name__}")

    # -- access --------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> float:
        try:
            return self.params[name].value
        except KeyError:
            raise KeyError(f"{name}: not a profile parameter") from None

    def values(self) -> dict[str, float]:
        return {n: p.value for n, p in self.params.items()}

    # -- provenance ----------------------------------------------------------------------------
    @functools.cached_property  # a frozen profile's values never change; the simulator stamps it per run
    def short_id(self) -> str:
        """First 8 hex of a sha256 over the parameter values: two profiles with one id cost the same."""
        text = json.dumps([[n, self.params[n].value] for n in PARAM_NAMES])
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def is_builtin(self) -> bool:
        """Exactly the built-in figures (CostProfile.default()), never calibrated."""
        return not self.calibrated and not self.fingerprint and all(
            p.source == "default" and p.value == PARAM_DOCS[n][0] for n, p in self.params.items())

    @property
    def host(self) -> str:
        """The host it describes: notes["host"], else its file's name (calibrate writes <host>.json),
        else "built-in" or "in-code"."""
        named = self.notes.get("host") if isinstance(self.notes, dict) else None
        if isinstance(named, str) and named:
            return named
        if self.path:
            return Path(self.path).stem
        return "built-in" if self.is_builtin else "in-code"

    @property
    def date(self) -> str:
        """The calibration's UTC date (notes["calibrated_at"]), else the file's date, else "undated"."""
        stamp = self.notes.get("calibrated_at") if isinstance(self.notes, dict) else None
        if isinstance(stamp, str) and stamp[:10]:
            return stamp[:10]
        return self.file_date or ("" if self.is_builtin else "undated")

    @functools.cached_property
    def label(self) -> str:
        """Host, date and id, e.g. "vm-2c 2026-12-01 #1a2b3c4d"; "uncalibrated" when it is."""
        parts = [self.host, self.date, "" if self.calibrated else "uncalibrated", f"#{self.short_id}"]
        return " ".join(p for p in parts if p)

    def describe(self) -> str:
        """The label and where it was found, e.g. "vm-2c 2026-12-01 #1a2b3c4d (host: /path/vm-2c.json)"."""
        where = self.origin or ("file" if self.path else "given in code")
        return f"{self.label} ({where}: {self.path})" if self.path else f"{self.label} ({where})"

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def default(cls) -> CostProfile:
        """Uncalibrated figures (sd = 50% of value); every source is 'default'."""
        params = {n: Param(v, 0.5 * v, "default") for n, (v, _doc) in PARAM_DOCS.items()}
        return cls(params=params, fingerprint={}, calibrated=False)

    def with_params(self, source: str, sds: dict[str, float] | None = None, **values: float) -> CostProfile:
        """Copy with some values replaced (and their source set), e.g. with_params('probe', ctx_switch_s=2e-6)."""
        params = dict(self.params)
        for name, value in values.items():
            if name not in PARAM_DOCS:
                raise ValueError(f"{name}: unknown profile parameter")
            sd = (sds or {}).get(name, params[name].sd)
            params[name] = Param(value, sd, source)
        return replace(self, params=params)

    def zeroed(self, keep: tuple[str, ...] = ("cpu_work_scale", "gil_work_scale", "gil_switch_interval_s",
                                              "time_slice_s")) -> CostProfile:
        """Every overhead set to 0 except `keep`: for checking models against queueing theory."""
        params = {n: (p if n in keep else Param(0.0, 0.0, p.source)) for n, p in self.params.items()}
        return replace(self, params=params)

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "serverlab-profile/1",
            "fingerprint": self.fingerprint,
            "calibrated": self.calibrated,
            "params": {
                n: {"value": p.value, "sd": p.sd, "source": p.source, "spread": p.spread, "doc": PARAM_DOCS[n][1]}
                for n, p in self.params.items()
            },
            "validation": self.validation,
            "failed_runs": self.failed_runs,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostProfile:
        if not isinstance(data, dict) or data.get("format") != "serverlab-profile/1":
            raise ValueError("format: not a serverlab-profile/1 document")
        raw = data.get("params")
        if not isinstance(raw, dict):
            raise ValueError("params: missing or not a mapping")
        params = {}
        for name, p in raw.items():
            if not isinstance(p, dict) or "value" not in p:
                raise ValueError(f"{name}: parameter has no value")
            spread = p.get("spread")
            if spread is not None and (
                isinstance(spread, bool) or not isinstance(spread, (int, float)) or not math.isfinite(spread)
            ):
                raise ValueError(f"{name}.spread: expected a number or null, got {spread!r}")
            try:
                params[name] = Param(p["value"], p.get("sd", 0.0), p.get("source", "default"), spread)
            except ValueError as exc:  # Param names its own field: say which parameter it belongs to
                raise ValueError(f"{name}.{exc}") from None
        for name in ADDED_LATER:
            params.setdefault(name, Param(PARAM_DOCS[name][0], 0.0, "default"))
        calibrated = data.get("calibrated", False)
        if not isinstance(calibrated, bool):
            raise ValueError(f"calibrated: expected true or false, got {calibrated!r}")
        parts: dict[str, Any] = {}
        for key, kind in (("fingerprint", dict), ("validation", list), ("failed_runs", list), ("notes", dict)):
            value = data.get(key)
            if value is not None and not isinstance(value, kind):
                what = "an object" if kind is dict else "a list"
                raise ValueError(f"{key}: expected {what} or null, got {type(value).__name__}")
            if kind is list and any(not isinstance(row, dict) for row in value or ()):
                raise ValueError(f"{key}: expected a list of objects (table rows)")
            parts[key] = kind(value or kind())
        return cls(params=params, calibrated=calibrated, **parts)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False))
        tmp.replace(path)  # atomic: a crash mid-write never leaves a truncated profile
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CostProfile:
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"path: expected a file path, got {type(path).__name__}")
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: profile file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: corrupt or truncated profile ({exc})") from None
        except OSError as exc:  # a directory, no permission, an I/O error
            raise ValueError(f"{path}: cannot read the profile ({exc.strerror or exc})") from None
        try:
            profile = cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: invalid profile: {exc}") from None
        try:
            mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
            file_date = f"{mtime:%Y-%m-%d}"
        except OSError:
            file_date = ""
        return replace(profile, path=str(path), file_date=file_date)

    # -- host check ----------------------------------------------------------------------------
    def fingerprint_mismatch(self, here: dict[str, Any] | None = None) -> list[str]:
        """Fingerprint fields that differ from this host (empty for an uncalibrated default)."""
        if not self.fingerprint:
            return []
        here = here or host_fingerprint()
        return [k for k in sorted(set(self.fingerprint) | set(here)) if self.fingerprint.get(k) != here.get(k)]

    def warn_if_foreign(self) -> None:
        diff = self.fingerprint_mismatch()
        if diff:
            here = host_fingerprint()
            detail = ", ".join(f"{k}: profile {self.fingerprint.get(k)!r} vs here {here.get(k)!r}" for k in diff)
            warnings.warn(f"cost profile was made on another host ({detail})", HostMismatchWarning, stacklevel=3)


class HostMismatchWarning(UserWarning):
    pass


class UncalibratedProfileWarning(UserWarning):
    """No calibrated profile was found: the numbers come from the built-in, uncalibrated costs."""


def profile_dir() -> Path:
    """Where calibrated profiles live: $SERVERLAB_PROFILE_DIR, else $XDG_DATA_HOME/serverlab/profiles,
    else ~/.local/share/serverlab/profiles. Per user, never relative to the working directory."""
    named = os.environ.get(PROFILE_DIR_ENV)
    if named:
        return Path(named).expanduser()
    data = os.environ.get("XDG_DATA_HOME")
    base = Path(data).expanduser() if data and Path(data).is_absolute() else Path.home() / ".local" / "share"
    return base / "serverlab" / "profiles"


def default_profile_path() -> Path:
    """This host's calibrated profile: what `serverlab calibrate` writes and resolve_profile reads."""
    return profile_dir() / f"{host_name()}.json"


def _load_named(path: str | os.PathLike, field_name: str, origin: str) -> CostProfile:
    try:
        return replace(CostProfile.load(path), origin=origin)
    except ValueError as exc:
        raise ValueError(f"{field_name}: {exc}") from None


def resolve_profile(profile: CostProfile | str | os.PathLike | None = None) -> CostProfile:
    """The one rule for which cost profile a run uses (see the module docstring).

    A CostProfile is used as given; a path is loaded (origin "explicit"). Otherwise $SERVERLAB_PROFILE
    (origin "env"), then this host's profile at default_profile_path() (origin "host"), then the
    built-in profile (origin "built-in") with an UncalibratedProfileWarning. A profile named
    explicitly, by the environment or at the host location that does not load is a ValueError naming
    it, never a silent fallback."""
    if isinstance(profile, CostProfile):
        return profile
    if profile is not None:
        if not isinstance(profile, (str, os.PathLike)) or not str(profile):
            raise ValueError(f"profile: expected a CostProfile, a path or None, got {profile!r}")
        return _load_named(profile, "profile", "explicit")
    env = os.environ.get(PROFILE_ENV)
    if env:
        return _load_named(env, PROFILE_ENV, "env")
    path = default_profile_path()
    if path.exists():
        return _load_named(path, "profile", "host")
    warnings.warn(
        f"no calibrated profile for this host ({path} does not exist, {PROFILE_ENV} is not set): using the "
        "built-in UNCALIBRATED costs, which do not describe this machine. Run `serverlab calibrate` "
        "(about 20 min; `--quick` about 4) to write one there.", UncalibratedProfileWarning, stacklevel=2)
    return replace(CostProfile.default(), origin="built-in")
