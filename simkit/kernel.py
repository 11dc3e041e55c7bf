"""The kernel's side of a server (docs/DESIGN.md §6): listen backlog with SYN drop and client retry, fds per
process (EMFILE), epoll_wait cost, connections.

- Backlog: a listen socket's accept queue holds min(backlog, somaxconn) established connections; a
  SYN arriving at a full queue is dropped (Linux drops rather than refuses) and the client's TCP
  retransmits the SYN after 1 s, then 2 s more, 4 s more... (cumulative 1, 3, 7, 15, 31, 63 s:
  tcp_syn_retries = 6), giving up at its request timeout or when the retries run out.
- A connection's first request arrives after its handshake (clients.py): an accepted connection
  may not be readable yet.
- fds: each process has RLIMIT_NOFILE = fd_limit. An accept that would pass it fails with EMFILE;
  the servers back off (they stop watching the listen socket until one of their fds closes), so
  the connection stays queued in the backlog rather than crash the server (failure "fd_limit").
- epoll_wait costs epoll_wait_base_s + epoll_per_event_s x (ready events): under load one call
  returns many events, which is what makes a reactor cheap per request.
"""

from __future__ import annotations

from collections import deque

SYN_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # Linux initial RTO 1 s, doubling; 6 retries


class Conn:
    """One TCP connection, both ends. Server side: `req` is the request waiting to be read (or None),
    `eof` the client's close not yet seen, `busy` a request being served."""

    __slots__ = ("slot", "req", "eof", "busy", "accepted", "closed", "owner", "proc", "syn_tries", "nreq",
                 "client_free", "listener", "creq", "lt_batch", "lt_pos")

    def __init__(self, slot) -> None:
        self.slot = slot  # client-side owner (a Slot), None for idle connections
        self.req = None
        self.eof = False
        self.busy = False
        self.accepted = False
        self.closed = False
        self.owner = None  # server-side: the reactor / thread that serves it
        self.proc = None
        self.syn_tries = 0
        self.nreq = 0
        self.client_free = False
        self.listener = None
        self.creq = None  # client side: the request outstanding on this connection
        self.lt_batch = -1  # the reactor batch (epoll_wait) that last reported it, and where in it
        self.lt_pos = 0


class Listener:
    """A listen socket: accept queue with capacity min(backlog, somaxconn), and its watchers.

    Watchers are model objects with an `idle` flag and a `notify()` method; a new connection wakes
    ONE idle watcher (a blocking accept, or epoll with EPOLLEXCLUSIVE); busy watchers see the queue
    at their next epoll_wait (level-triggered)."""

    __slots__ = ("queue", "cap", "watchers", "drops")

    def __init__(self, backlog: int, somaxconn: int) -> None:
        self.queue: deque = deque()
        self.cap = min(backlog, somaxconn)
        self.watchers: list = []
        self.drops = 0

    def syn(self, conn: Conn) -> bool:
        """A SYN (with the request behind it) arrives: queue it, or drop it when the queue is full."""
        if len(self.queue) >= self.cap:
            self.drops += 1
            return False
        self.queue.append(conn)
        conn.listener = self
        for w in self.watchers:
            if w.idle:
                w.notify()
                break
        return True


def fd_open(proc, ledger) -> bool:
    """Open one fd in `proc` for a connection: False on EMFILE (or when memory refuses it)."""
    if proc.fds >= proc.fd_limit:
        ledger.fail("fd_limit")
        return False
    if not ledger.add_conns(1):
        return False
    proc.fds += 1
    return True


def fd_close(proc, ledger) -> None:
    proc.fds -= 1
    ledger.del_conns(1)
    if proc.fd_waiters:
        waiters = proc.fd_waiters
        proc.fd_waiters = []
        for fn in waiters:
            fn()


def epoll_cost(profile_values: dict, ready: int) -> float:
    return profile_values["epoll_wait_base_s"] + profile_values["epoll_per_event_s"] * ready
