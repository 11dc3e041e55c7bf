"""What the models share: connection bookkeeping, the steps of serving one request (priced by
simkit.costs, in the order its docstring gives), an epoll reactor loop, a blocking acceptor
thread, and idle-connection placement."""

from __future__ import annotations

from collections import deque

from simkit import costs
from simkit.kernel import Listener, epoll_cost, fd_close, fd_open
from simkit.machine import CALL, CPU, GIL, SEND, SLEEP


class ModelBase:
    """One architecture. Subclasses set up processes/threads in build() and define readable()."""

    name = ""
    # Level-triggered readiness order for served connections (Reactor.program). m7 arms EPOLLONESHOT
    # and re-arms after each request, so its readiness order is simply arrival order.
    level_triggered = True

    def __init__(self, env, scenario, profile, rng) -> None:
        self.env = env
        self.scenario = scenario
        self.spec = scenario.model
        self.hw = scenario.hardware
        self.wl = scenario.workload
        self.p = profile.values()
        self.rng = rng
        self.machine = None
        self.clients = None
        p = self.p
        self.recv_s = costs.recv_s(p, self.wl)
        self.send_s = costs.send_s(p, self.wl)
        self.parse_s = p["parse_s"]
        self.ctl_s = costs.ctl_s(p)
        self.eof_s = costs.eof_s(p)
        self.accept_s = p["accept_s"]
        self.io_extra = p["io_overshoot_s"]
        self.listeners: list[Listener] = []
        self.window_drops = 0  # SYNs dropped inside the measurement window (a ramp storm is not a failure)

    # -- wiring (sim.py) -------------------------------------------------------------------------
    def attach(self, machine, clients) -> None:
        self.machine = machine
        self.clients = clients

    def build(self) -> None:
        raise NotImplementedError

    def new_listener(self) -> Listener:
        lst = Listener(self.spec.backlog, self.hw.somaxconn)
        self.listeners.append(lst)
        return lst

    def pick_listener(self, conn) -> Listener:
        return self.listeners[0]

    def syn_drops(self) -> int:
        """Every SYN dropped over the run, ramp included."""
        return sum(lst.drops for lst in self.listeners)

    # -- kernel -> model -------------------------------------------------------------------------
    def syn(self, conn) -> bool:
        if self.pick_listener(conn).syn(conn):
            return True
        if self.machine.w0 <= self.env._now < self.machine.w1:
            self.window_drops += 1
        return False

    def on_data(self, conn) -> None:
        """A request (conn.req) or the client's close (conn.eof) reached an accepted socket."""
        # owner None: accepted but still in a hand-off queue; the new owner looks at req/eof itself
        if conn.accepted and conn.owner is not None and not conn.busy and not conn.closed:
            conn.busy = True
            self.readable(conn)

    def readable(self, conn) -> None:
        """Default: the connection's owner is a Reactor; it becomes a ready event of that loop."""
        owner = conn.owner
        owner.ready.append(conn)
        owner.notify()

    def handle_ready(self, reactor, conn, steps) -> None:
        """Default: serve the request inline in the loop thread (m3, m5, m6)."""
        self.serve_steps(steps, conn)

    def handle_eof(self, reactor, conn, steps) -> None:
        """Default: the loop reads the client's FIN itself, unregisters and closes the socket."""
        steps.append((CPU, self.eof_s, None))
        self.close_conn(conn)

    def on_send(self, conn, req, t: float) -> None:
        """A SEND step: the response leaves at time t (resolved inside a burst, t >= now)."""
        conn.busy = False
        self.clients.respond(conn, req, t)
        # A short-lived connection's last request carries no `Connection: close` (realkit's load
        # generator just closes after its k-th answer): the server keeps the connection until the
        # client's FIN shows up as EOF (an m1 server sits idle in recv() meanwhile).
        self.serve_next(conn)

    def serve_next(self, conn) -> None:
        """A connection its server is done with: what already arrived on it (a request, EOF) is ready."""
        if conn.eof or conn.req is not None:
            conn.busy = True
            self.readable(conn)

    # -- connections -------------------------------------------------------------------------------
    def accept_conn(self, conn, proc, owner) -> bool:
        """Give an accepted connection an fd in `proc`; False on EMFILE (the caller re-queues it)."""
        if not fd_open(proc, self.machine.ledger):
            return False
        conn.accepted = True
        conn.proc = proc
        conn.owner = owner
        return True

    def close_conn(self, conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.accepted:
            fd_close(conn.proc, self.machine.ledger)

    def start_thread(self, parent, proc, program, obj):
        """Thread.start() called by `parent` (from one of its CALL steps): a new thread running
        `program`, or None when threads_max or memory refuses it. Thread.start() returns only once the
        new thread has run its bootstrap, which needs the GIL, so `parent` waits for that: under GIL
        contention a server starts threads no faster than they get the GIL. The bootstrap is
        thread_boot_s of the new thread's CPU with the GIL (its exit's share too). The new thread is
        woken while `parent` still holds its core (clone() places it before the parent blocks), so
        the kernel's fork balancing puts it on an idle core where there is one: a cross-core wake-up
        there, and another when it wakes the parent back. Without a GIL (a C server's
        pthread_create) nothing waits for the new thread."""
        m = self.machine
        th = m.new_thread(proc, program, obj, start=False)
        if th is None:
            return None
        th.steps.append((GIL, self.p["thread_boot_s"], None))  # _bootstrap_inner sets the started event
        if not self.spec.gil:
            m.wake(th)
            return th
        th.steps.append((CALL, self._started, parent))
        m.wake(th)
        m.park(parent)
        return th

    def _started(self, th, parent) -> None:
        self.machine.wake(parent, th.core)

    def serve_steps(self, steps, conn) -> None:
        """Append the steps that serve conn's pending request inline (conn.busy is already set)."""
        req = conn.req
        conn.req = None
        steps.append((CPU, self.recv_s, None))
        if req.cpu > 0.0:
            # realkit's order (handle -> do_work): parse, hash with the GIL released, then re-take the
            # GIL for gil_us and the response. Each re-take is a point where threads contend.
            steps.append((GIL, self.parse_s, None))
            steps.append((CPU, req.cpu, None))
            steps.append((GIL, req.gil, None))
        else:
            steps.append((GIL, self.parse_s + req.gil, None))
        if req.io > 0.0:
            steps.append((SLEEP, req.io + self.io_extra, None))
            steps.append((GIL, 0.0, None))  # back from time.sleep
        steps.append((CPU, self.send_s, None))
        steps.append((SEND, conn, req))
        steps.append((GIL, 0.0, None))  # back from send() into the Python loop

    # -- idle connections -----------------------------------------------------------------------
    def idle_procs(self) -> list:
        """The processes that would own idle connections (round robin)."""
        return [self.machine.procs[0]]

    def place_idle(self, n: int) -> int:
        """Idle connections, established before the run: fds and memory only (no events).

        Past a process's fd limit they stay queued (the server cannot accept them): failure fd_limit.
        Returns how many were placed."""
        if n <= 0:
            return 0
        procs = self.idle_procs()
        ledger = self.machine.ledger
        placed = 0
        share, extra = divmod(n, len(procs))
        for i, proc in enumerate(procs):
            want = share + (1 if i < extra else 0)
            room = max(0, proc.fd_limit - proc.fds - 1)  # keep one fd: the servers reserve one for EMFILE
            k = min(want, room)
            k = self.idle_extra(proc, k)
            if k < want:
                ledger.fail("fd_limit" if room < want else ledger.failure or "memory")
            if k > 0 and ledger.add_conns(k):
                proc.fds += k
                placed += k
        return placed

    def idle_extra(self, proc, k: int) -> int:
        """Hook: extra resources per idle connection (m2: a thread each). Returns how many fit."""
        return k


class _ListenerWatcher:
    """What a thread that sleeps on a listen socket shares (the reactor loop, the acceptor): the
    listener wakes it when a connection is queued, and an EMFILE back-off ends by re-checking."""

    __slots__ = ()

    def notify(self) -> None:
        if self.idle:
            self.idle = False
            self.model.machine.wake(self.thread)

    def _unblock_accept(self) -> None:
        self.accept_blocked = False
        if self.listener is not None and self.listener.queue:
            self.notify()


class Reactor(_ListenerWatcher):
    """One thread running a level-triggered epoll loop.

    Each iteration: epoll_wait (base + per ready event), then accept everything pending on the
    watched listen socket(s), register fds handed over through `inbox`, send finished results from
    `completions` (m4), and handle every ready connection with model.handle_ready(). The batch is
    fixed when epoll_wait returns; work arriving meanwhile waits for the next iteration."""

    __slots__ = ("model", "thread", "proc", "ready", "idle", "listener", "accept_blocked", "inbox",
                 "completions", "posted", "conns", "inbox_cost", "batches")

    def __init__(self, model: ModelBase, proc, listener=None) -> None:
        self.model = model
        self.proc = proc
        self.ready: deque = deque()
        self.idle = False
        self.listener = listener
        self.accept_blocked = False
        self.inbox: deque = deque()
        self.completions: deque = deque()
        self.posted: deque = deque()  # (fn, arg) calls other threads post to the loop (m7)
        self.conns = 0
        self.batches = 0
        # registering a handed-over fd: queue get + epoll_ctl(ADD); m6 fdpass sets recvmsg instead
        self.inbox_cost = model.p["queue_handoff_s"] + model.ctl_s
        if listener is not None:
            listener.watchers.append(self)
        self.thread = model.machine.new_thread(proc, self.program, self)

    def program(self, th) -> bool:
        model = self.model
        lst = self.listener
        can_accept = lst is not None and lst.queue and not self.accept_blocked
        n = (len(self.ready) + (1 if can_accept else 0) + (1 if self.inbox else 0)
             + (1 if self.completions or self.posted else 0))
        if n == 0:
            self.idle = True
            return False
        steps = th.steps
        steps.append((CPU, epoll_cost(model.p, n), None))
        if can_accept:
            q = lst.queue
            cost = model.accept_s + model.ctl_s  # accept + epoll_ctl(ADD)
            while q:
                conn = q.popleft()
                if not model.accept_conn(conn, self.proc, self):
                    q.appendleft(conn)  # EMFILE: stays in the backlog; stop watching until an fd closes
                    self.accept_blocked = True
                    self.proc.fd_waiters.append(self._unblock_accept)
                    break
                steps.append((CPU, cost, None))
                self.adopt(conn)
        if self.inbox:
            cost = self.inbox_cost
            inbox = self.inbox
            while inbox:
                steps.append((CPU, cost, None))
                self.adopt(inbox.popleft())
        batch = self.ready  # what this epoll_wait returned
        self.ready = deque()  # always a fresh one: a posted call's re-arm lands here, for the next turn
        if self.completions or self.posted:
            # the way back from other threads: one read of the wake-up fd (the eventfd is written once
            # per batch: realkit's Reactor.post coalesces wake-ups), then each result off a deque and
            # sent (m4), each posted call run on the loop (m7)
            steps.append((CPU, model.recv_s, None))
            comp = self.completions
            while comp:
                conn, req = comp.popleft()
                steps.append((CPU, model.send_s, None))
                steps.append((SEND, conn, req))
            posted = self.posted
            while posted:
                fn, arg = posted.popleft()
                fn(self, arg, steps)
        if batch:
            k = self.batches = self.batches + 1
            if len(batch) > 1 and model.level_triggered:
                # Level-triggered epoll re-queues each fd it reports at the tail of its ready list at
                # once, so at the next epoll_wait the fds reported last time and readable again come
                # first, in last time's order, and an fd that turned readable after that wait comes
                # after them all: a connection served last in a batch, whose next request arrives just
                # after the following epoll_wait, keeps being served last (about two rounds' latency).
                prev = k - 1
                batch = sorted(batch, key=lambda c: c.lt_pos if c.lt_batch == prev else 1 << 60)
            for i, conn in enumerate(batch):
                conn.lt_batch = k
                conn.lt_pos = i
                if conn.closed:
                    continue
                if conn.eof:
                    model.handle_eof(self, conn, steps)
                elif conn.req is not None:
                    model.handle_ready(self, conn, steps)
                else:
                    conn.busy = False
        return True

    def adopt(self, conn) -> None:
        """A connection now registered with this loop; its first request (or EOF) is ready at once."""
        conn.owner = self
        self.conns += 1
        if conn.eof or conn.req is not None:
            conn.busy = True
            self.ready.append(conn)


class Acceptor(_ListenerWatcher):
    """A thread blocked in accept() on one listen socket that hands each connection to `handoff`
    (m2: spawn a thread; m5/m7: round-robin to a loop; m6 fdpass: sendmsg to a worker)."""

    __slots__ = ("model", "thread", "proc", "listener", "idle", "accept_blocked", "cost", "gil_s", "handoff",
                 "target_proc")

    def __init__(self, model: ModelBase, proc, listener, cost: float, handoff, target_proc=None,
                 gil_s: float = 0.0) -> None:
        self.model = model
        self.proc = proc
        self.listener = listener
        self.idle = False
        self.accept_blocked = False
        self.cost = cost  # accept() and what else runs with the GIL released
        self.gil_s = gil_s  # the Python around it, GIL held (m2: starting the connection's thread)
        self.handoff = handoff  # handoff(acceptor thread, conn), a CALL step of the acceptor's
        self.target_proc = target_proc  # target_proc(conn) -> the process whose fd table gets the conn
        listener.watchers.append(self)
        self.thread = model.machine.new_thread(proc, self.program, self)

    def program(self, th) -> bool:
        q = self.listener.queue
        if self.accept_blocked or not q:
            self.idle = True
            return False
        steps = th.steps
        while q:
            conn = q[0]
            proc = self.target_proc(conn) if self.target_proc is not None else self.proc
            if not self.model.accept_conn(conn, proc, None):
                self.accept_blocked = True
                proc.fd_waiters.append(self._unblock_accept)
                break
            q.popleft()
            steps.append((CPU, self.cost, None))
            steps.append((GIL, self.gil_s, None))  # the Python around accept() runs with the GIL
            steps.append((CALL, self._hand, conn))
        if not steps:
            self.idle = True
            return False
        return True

    def _hand(self, th, conn) -> None:
        if conn.eof:
            self.model.close_conn(conn)  # the client gave up while queued
            return
        self.handoff(th, conn)
