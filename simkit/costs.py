"""What a request costs: byte counts on the wire and the per-request cost formulas, in one place.

simkit's models, simkit.analytic, experiments' window sizing and calibration all price a request
with these functions, from a CostProfile (or any mapping of its parameter names to values) and a
Workload. No SimPy here.

A request served inline costs, in order (docs/DESIGN.md §4, §6):
    recv        recv_base_s + recv_per_byte_s x request_bytes + miss     GIL released (syscall)
    parse       parse_s + gil_us work                                     GIL held
    cpu work    cpu_us x cpu_work_scale                                   GIL released
    io          time.sleep(io_us) + io_overshoot_s                        off-core, GIL released
    send        send_base_s + send_per_byte_s x (resp_bytes + headers)    GIL released
                + miss
(+ epoll_ctl_s to unregister when the server closes the connection.) miss is syscall_cache_miss_s x
cache_share: the live connections' socket state outgrows a core's caches (cache_share).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from simkit import registry

# The head of a keep-alive 200 response with a two-digit Content-Length, as realkit/protocol.py
# writes it ("HTTP/1.1 200 OK", Content-Type, Content-Length, blank line); tests pin it to the bytes.
RESP_HEADER_BYTES = 65

Costs = Mapping[str, float]  # a CostProfile, or any mapping of its parameter names to values


def cache_share(p: Costs, connections: int) -> float:
    """How much of the cache-miss ceiling a request pays with `connections` live (load-carrying)
    connections: 1 - exp(-connections / cache_knee_conns). Each request touches its connection's
    socket and protocol state; with few connections that stays in a core's caches, with thousands it
    is fetched from memory every time. Measured alone (calibration.probes.probe_conn_cache: round
    trips over N loopback connections in turn, and the load generator against a fast server at 50 and
    thousands of connections), the extra CPU per operation rises over a few hundred to a thousand
    connections, then levels off. Idle connections are not touched per request and do not count."""
    knee = p["cache_knee_conns"]
    return -math.expm1(-connections / knee) if knee > 0 and connections > 0 else 0.0


def syscall_miss_s(p: Costs, connections: int) -> float:
    """What one recv() or send() costs more with `connections` live: its share of syscall_cache_miss_s."""
    return p["syscall_cache_miss_s"] * cache_share(p, connections)


def recv_s(p: Costs, wl: Any) -> float:
    """One request's recv(): the syscall plus its bytes, and its share of the cache misses."""
    return p["recv_base_s"] + p["recv_per_byte_s"] * wl.request_bytes + syscall_miss_s(p, wl.connections)


def send_s(p: Costs, wl: Any) -> float:
    """One response's send(): headers included, as the real servers send, and its cache misses."""
    return (p["send_base_s"] + p["send_per_byte_s"] * (wl.resp_bytes + RESP_HEADER_BYTES)
            + syscall_miss_s(p, wl.connections))


def ctl_s(p: Costs) -> float:
    """epoll_ctl to register, re-arm or unregister a connection."""
    return p["epoll_ctl_s"]


def eof_s(p: Costs) -> float:
    """The server's end of a connection: read the client's FIN, unregister, close() the socket."""
    return p["recv_base_s"] + p["epoll_ctl_s"] + p["close_s"]


def cpu_work_s(p: Costs, wl: Any) -> float:
    return wl.cpu_us * 1e-6 * p["cpu_work_scale"]


def gil_work_s(p: Costs, wl: Any) -> float:
    return wl.gil_us * 1e-6 * p["gil_work_scale"]


def io_s(p: Costs, wl: Any) -> float:
    """The blocking wait, with the sleep's overshoot; 0 without io work."""
    return wl.io_us * 1e-6 + p["io_overshoot_s"] if wl.io_us > 0 else 0.0


@dataclass(frozen=True)
class Demands:
    """What one request asks of the machine, in seconds, split by what holds the GIL: syscalls,
    cpu_us work and sleeps release the GIL; parsing, Python dispatch and gil_us work hold it."""

    python_s: float  # Python-level handling per request, GIL held: parse, event dispatch, hand-offs
    syscall_s: float  # kernel work per request, GIL released: recv, send, epoll_wait, switches
    cpu_work_s: float  # cpu_us work, GIL released
    gil_work_s: float  # gil_us work, GIL held
    io_s: float  # io_us blocking wait: no CPU
    per_conn_s: float  # connection setup (accept, epoll_ctl, spawn) amortised over its requests
    rtt_s: float  # client-side loopback round trip: pure delay

    @property
    def cpu_s(self) -> float:
        """Core time per request: what the utilisation law multiplies by throughput."""
        return self.python_s + self.syscall_s + self.cpu_work_s + self.gil_work_s + self.per_conn_s

    @property
    def gil_s(self) -> float:
        """GIL-held time per request (connection setup counted as Python: it is mostly object work)."""
        return self.python_s + self.gil_work_s + self.per_conn_s


def demands(scenario: Any, p: Costs) -> Demands:
    """Per-request demands of a scenario, with its architecture's extra costs (registry).

    One epoll_wait per request (no batching credit) for the event-loop models; a connection's
    lifetime (accept, register, the client's FIN, unregister, close, the architecture's per-connection
    cost) amortised over requests_per_conn (keep-alive for the run: nothing)."""
    w = scenario.workload
    arch = registry.get(scenario.model.name)
    extra = arch.extra_costs(scenario.model, p)
    epoll_sys = epoll_py = 0.0
    if not arch.blocking_sockets:
        epoll_sys, epoll_py = p["epoll_wait_base_s"], p["epoll_per_event_s"]
    per_conn = 0.0
    if w.requests_per_conn is not None:
        per_conn = (p["accept_s"] + p["epoll_ctl_s"] + eof_s(p) + extra.per_conn_s) / w.requests_per_conn
    return Demands(
        python_s=p["parse_s"] + epoll_py + extra.python_s,
        syscall_s=recv_s(p, w) + send_s(p, w) + epoll_sys + extra.syscall_s,
        cpu_work_s=cpu_work_s(p, w),
        gil_work_s=gil_work_s(p, w),
        io_s=io_s(p, w),
        per_conn_s=per_conn,
        rtt_s=p["loopback_rtt_s"],
    )


def gil_acquisitions(wl: Any) -> int:
    """GIL acquisitions a request makes on the inline path (simkit.models.base serve steps): parse,
    after GIL-free cpu work, after the sleep, after send. Every release hands the GIL to a waiter,
    however short the syscall (simkit.machine), so each counts."""
    return 2 + (wl.cpu_us > 0) + (wl.io_us > 0)
