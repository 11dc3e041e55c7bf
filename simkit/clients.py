"""The clients (docs/DESIGN.md §6): closed loop, open loop, short-lived and idle connections, timeouts.

- Closed loop: `connections` slots, each with at most one request outstanding; after a response
  the slot thinks for think_s (constant), then sends the next. Slots start one after another,
  evenly spaced at the workload's connect_rate_cps (a fleet of clients arriving), never closer than
  the generator's time per connect (client_step_s + client_cpu_per_conn_s: a load generator opens
  connections one at a time; with connect_rate_cps None that is the spacing: a start-up storm). A
  slot's first request is issued when it arrives, so its latency runs from then. connect_ramp_s() is
  how long the arrivals last.
- Open loop: arrivals at rate_rps (Poisson or constant) are assigned to a free slot; when all
  `connections` slots are busy, arrivals wait in the client's queue. Latency is timed from the
  intended send time, so queueing in the client is counted (no coordinated omission). A slot opens
  its connection on its first request and keeps it.
- Short-lived connections (requests_per_conn = k): as realkit's load generator, the client closes
  the connection after the k-th answer (no `Connection: close` header): its FIN reaches the server
  the generator's per-request time + RTT/2 after the answer arrived, and the server closes on that EOF; the
  slot reconnects for its next request at once (accept, fd, memory and, for m2, a thread spawn again).
- Idle connections hold fds and memory only; the model places them (models/base.py).
- A connection reaches the accept queue 1.5 RTT after connect() (SYN, SYN-ACK, ACK); its first
  request follows the generator's per-request time later (the client's event loop must see the connect
  complete before it writes), so a server that accepts at once may wait in recv() for it.
  A dropped SYN is retried by TCP at 1 s, then 3 s, 7 s... cumulative (kernel.SYN_RETRY_DELAYS_S).
- At most `connect_concurrency` connects are in flight at once (realkit's load generator holds a
  semaphore around connect()); the others wait their turn in order, their latency already running.
  A place is held from connect() until the connection is established, refused, or abandoned by its
  request's timeout, so SYNs dropped at a full backlog stall everyone behind them for the 1 s retry.
  (The real generator splits the places between its worker processes; one pool here.)
- Timeout: a request unanswered timeout_s after its issue time fails (errors_timeout); the client
  closes that connection (the server sees EOF) and the slot continues on a new one. Deadlines are
  kept in one FIFO (timeout_s is constant, so issue order is deadline order) and swept by a single
  timer, not one timer per request.
- Refused (SYN retries exhausted) -> errors_refused; a server that closes a connection it could
  not serve (m2 past threads_max) -> errors_reset. After either, the slot waits 1 s before
  reconnecting (as a load generator backs off), which bounds the error storm.
- The load generator's own CPU, where the run models it (simulate's loadgen_on_server_cores, or
  loadgen_cores: CPUs of its own, as realkit's runner gives it the box's other CPUs): one thread
  that, each time its event loop wakes with something to send, spends client_cpu_per_wake_s, then
  client_cpu_per_request_s per request and client_cpu_per_conn_s more for each connection it opens
  (connect, and the close of the one before: with requests_per_conn = 1 that bounds the rate of a
  fast server, as it does realkit's). Several generator processes (one per CPU, realkit) are one
  thread at their summed speed. On CPUs of its own it polls for its send times (realkit's does):
  no wake-up costs there, only its CPU. Without either flag the clients cost nothing.
- With loadgen_on_server_cores the load generator is that thread on the server's cores (the real
  one is a single uvloop process). An answer wakes it from the core that sent it (loopback processes
  the packet there), so the machine charges wakeup_s when it runs on another core; the probed
  client_cpu_per_wake_s holds that cross-core wake-up already and is charged less wakeup_s. There it does
  not poll for send times (that would take the server's CPU): open-loop arrivals, and closed-loop
  clients whose think time is over, wait for its next wake, which it sleeps for on its event loop's
  millisecond timer, at least SHARED_TIMER_RESOLUTION_S after the last (simkit.sendtimer, the rule
  realkit's generator runs), and it sends everything due at once; the wake needs a core like any
  thread (an idle core's wake-up, the server's threads ahead). An open-loop latency runs from the
  intended time, so this send lag is inside it, as in a real run; a think time runs long by it. On
  cores of its own the generator sends on time (realkit's polls), as the clients here do.
"""

from __future__ import annotations

import heapq
import random
from collections import deque

from simkit import costs
from simkit.events import at
from simkit.kernel import SYN_RETRY_DELAYS_S, Conn
from simkit.machine import CALL, CPU, Proc
from simkit.sendtimer import SHARED_TIMER_RESOLUTION_S, loop_timer_fire_s, wake_delay_s

PENDING, DONE, FAILED = 0, 1, 2
RECONNECT_BACKOFF_S = 1.0


class Request:
    __slots__ = ("t", "state", "close", "cpu", "gil", "io", "slot", "conn", "src")

    def __init__(self, t: float, slot) -> None:
        self.t = t
        self.state = PENDING
        self.close = False
        self.slot = slot
        self.conn = None
        self.src = None  # the core its answer was sent from, where the generator shares the server's cores


class Slot:
    """One client connection's place in the load generator (survives reconnects)."""

    __slots__ = ("idx", "conn", "cur")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.conn = None
        self.cur = None


class Clients:
    def __init__(self, env, model, scenario, profile, rng, w0: float, w1: float, service: str,
                 loadgen_machine=None, loadgen_shared: bool = True) -> None:
        wl = scenario.workload
        self.env = env
        self.model = model
        self.wl = wl
        self.rng = rng
        self.w0, self.w1 = w0, w1
        self.half_rtt = profile["loopback_rtt_s"] / 2.0
        self.timeout_s = wl.timeout_s
        self.think_s = wl.think_s
        self.rpc = wl.requests_per_conn
        self.exp = service == "exponential"
        self.cpu_s = costs.cpu_work_s(profile, wl)
        self.gil_s = costs.gil_work_s(profile, wl)
        self.io_s = wl.io_us * 1e-6
        # The box's jitter (probed): each request's work is scaled by a Gamma(k, 1/k) factor, mean 1 and
        # CV 1/sqrt(k). Without it, equal requests on a closed loop fall into a lock-step schedule in
        # which the same few connections miss every epoll round and the p99 sits at twice the p50.
        cv_cpu, cv_gil = profile["cpu_work_cv"], profile["gil_work_cv"]
        self.k_cpu = 1.0 / cv_cpu**2 if cv_cpu > 0 else 0.0
        self.k_gil = 1.0 / cv_gil**2 if cv_gil > 0 else 0.0
        self.open = wl.mode == "open"
        self.fast_closed = not self.open and not loadgen_machine
        # with many live connections, its recv() and send() miss the caches as the server's do, and its
        # own per-connection state beyond them (client_cache_miss_s; simkit.costs.cache_share)
        self.client_cpu = (profile["client_cpu_per_request_s"] + 2.0 * costs.syscall_miss_s(profile, wl.connections)
                           + profile["client_cache_miss_s"] * costs.cache_share(profile, wl.connections))
        self.client_wake = profile["client_cpu_per_wake_s"]
        if loadgen_machine is not None and loadgen_shared:
            # The probed wake-up (calibration.probes.probe_loadgen: the generator on a CPU of its own,
            # woken by the server's answer from another core) holds a cross-core wake-up. On the server's
            # cores the machine charges that itself (wakeup_s) when the answer's core is not the one the
            # generator wakes on, so it is taken out here: a same-core wake-up costs less, as it does.
            self.client_wake = max(0.0, self.client_wake - profile["wakeup_s"])
        self.client_conn = profile["client_cpu_per_conn_s"]
        self.client_step = client_step_s(profile)  # one unbatched request's turn of its loop
        # counters over the cohort (requests issued in [w0, w1))
        self.issued = 0
        self.completed = 0
        self.err_refused = self.err_timeout = self.err_reset = 0
        self.latencies: list[float] = []
        self.latencies_in_window: list[float] = []  # realkit's view: every answer completed in the window
        self.area = 0.0  # integral of the number in system over the window
        self.total = 0  # every request of the run
        # pending requests by issue time (a heap: the fast path issues requests at future times)
        self.deadlines: list = []
        self.sweep_armed = False
        self.slots = [Slot(i) for i in range(wl.connections)]
        self.connect_places = wl.connect_concurrency
        self.connect_queue: deque = deque()  # requests waiting for a place to connect
        self.free_slots: list[Slot] = []
        self.queue: deque = deque()  # open loop: arrivals waiting for a free slot
        # the load generator's thread: on the server's cores (shared) or a machine of its own
        self.lg = None
        if loadgen_machine is not None:
            m = loadgen_machine
            proc = Proc(-1, False, 1 << 30)  # not the server's: outside the ledger
            self.lg_jobs: deque = deque()
            self.lg = m.new_thread(proc, self._lg_program, start=False, loadgen=True)
            self.lg_machine = m
            self.lg_shared = loadgen_shared
            if loadgen_shared:
                m.net_thread = self.lg  # its packets are processed on its core
        # The generator on the server's cores sends on its timer (see the top): open-loop arrivals wait
        # in `undispatched` (next_arrival_t: the arrival process's next), closed-loop slots whose think
        # time ends at `due` in `thinking` as (due, slot), for its next wake at lg_wake_t (inf: none set).
        self.lg_timer = self.lg is not None and loadgen_shared and (self.open or self.think_s > 0)
        self.undispatched: deque = deque()
        self.thinking: deque = deque()
        self.next_arrival_t = 0.0
        self.lg_wake_t = float("inf")
        self.lg_armed = False
        self.lg_rng = random.Random(rng.getrandbits(32)) if self.lg_timer else None
        self.send_lag_s: list[float] = []  # open loop: intended-to-sent delay of requests sent in the window
        self.lg_wakes = 0  # the generator's timer wakes that sent something, inside the window

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        gap = first_connect_gap_s(self.wl, self.client_step + self.client_conn)
        if self.open:
            self.free_slots = list(reversed(self.slots))
            self._at(0.0, self._arrival, None)
            if self.lg_timer:
                self._lg_arm(None, None)
        else:
            for i, slot in enumerate(self.slots):
                self._at(i * gap, self._start_slot, slot)

    def _at(self, delay: float, fn, value) -> None:
        at(self.env, delay, fn, value)

    def _start_slot(self, value) -> None:
        self._issue(value)

    # -- issuing -------------------------------------------------------------------------------
    def _new_request(self, t: float, slot) -> Request:
        req = Request(t, slot)
        if self.exp:
            rnd = self.rng.expovariate
            req.cpu = rnd(1.0 / self.cpu_s) if self.cpu_s > 0 else 0.0
            req.gil = rnd(1.0 / self.gil_s) if self.gil_s > 0 else 0.0
            req.io = rnd(1.0 / self.io_s) if self.io_s > 0 else 0.0
        else:
            req.cpu, req.gil, req.io = self.cpu_s, self.gil_s, self.io_s
            if self.k_cpu and req.cpu > 0.0:
                req.cpu *= self.rng.gammavariate(self.k_cpu, 1.0 / self.k_cpu)
            if self.k_gil and req.gil > 0.0:
                req.gil *= self.rng.gammavariate(self.k_gil, 1.0 / self.k_gil)
        self.total += 1
        if self.w0 <= t < self.w1:
            self.issued += 1
        heapq.heappush(self.deadlines, (t, self.total, req))
        if not self.sweep_armed:
            self._arm_sweep()
        return req

    def _issue(self, slot: Slot) -> None:
        """Closed loop: the slot sends its next request now."""
        req = self._new_request(self.env._now, slot)
        self._send(slot, req)

    def _arrival(self, value) -> None:
        now = self.env._now
        if now >= self.w1:
            return
        rate = self.wl.rate_rps
        gap = self.rng.expovariate(rate) if self.wl.arrival == "poisson" else 1.0 / rate
        self._at(gap, self._arrival, None)
        self.next_arrival_t = now + gap
        req = self._new_request(now, None)
        if self.lg_timer:
            self.undispatched.append(req)  # sent at the generator's next wake
            return
        self._dispatch(req)

    def _dispatch(self, req: Request) -> None:
        """Open loop: the generator sends the arrival `req` on a free connection, or queues it."""
        if self.free_slots:
            slot = self.free_slots.pop()
            req.slot = slot
            self._send(slot, req)
        else:
            self.queue.append(req)

    def _send(self, slot: Slot, req: Request) -> None:
        slot.cur = req
        if self.lg is not None:
            self.lg_jobs.append(req)
            self.lg_machine.wake(self.lg)
            return
        self._transmit(req)

    def _transmit(self, req: Request) -> None:
        slot = req.slot
        if req.state != PENDING or slot.cur is not req:
            return
        conn = slot.conn
        if conn is None or conn.eof or conn.closed:
            slot.conn = None
            if self.connect_places > 0:
                self._connect(req)
            else:
                self.connect_queue.append(req)
            return
        conn.nreq += 1
        conn.creq = req
        req.conn = conn
        if self.rpc is not None and conn.nreq >= self.rpc:
            req.close = True
        self._at(self.half_rtt, self._data_arrives, req)

    def _connect(self, req: Request) -> None:
        """Take a connect place and connect() for `req`."""
        self.connect_places -= 1
        slot = req.slot
        conn = Conn(slot)
        slot.conn = conn
        conn.nreq = 1
        conn.creq = req
        req.conn = conn
        if self.rpc is not None and self.rpc <= 1:
            req.close = True
        # SYN (rtt/2), SYN-ACK (rtt/2), then the ACK with the request: the connection reaches the
        # accept queue 1.5 RTT after the client's connect()
        self._at(3.0 * self.half_rtt, self._syn_arrives, req)

    def _connect_done(self) -> None:
        """A connect place is free: the oldest request still waiting for one connects."""
        self.connect_places += 1
        q = self.connect_queue
        while q:
            req = q.popleft()
            if req.state == PENDING and req.slot is not None and req.slot.cur is req:
                self._connect(req)
                return

    def _lg_program(self, th) -> bool:
        jobs = self.lg_jobs
        steps = th.steps
        if self.lg_timer and not self.lg_armed and self.env._now >= self.lg_wake_t:
            # its timer fired: send the arrivals due by now, then arm the next wake
            now = self.env._now
            q, thinking = self.undispatched, self.thinking
            if ((q and q[0].t <= now) or (thinking and thinking[0][0] <= now)) and self.w0 <= now < self.w1:
                self.lg_wakes += 1
            while q and q[0].t <= now:
                self._dispatch(q.popleft())
            while thinking and thinking[0][0] <= now:
                self._issue(thinking.popleft()[1])
            self.lg_wake_t = float("inf")
            self.lg_armed = True
            if jobs:
                self._lg_batch(steps, jobs)
            steps.append((CALL, self._lg_arm, None))
            return True
        if not jobs:
            return False
        self._lg_batch(steps, jobs)
        return True

    def _lg_batch(self, steps, jobs: deque) -> None:
        """One wake-up of the generator's loop sending every job queued. On the server's cores each send
        waits for the generator's CPU (as calibrated there); on CPUs of its own the sends go first and
        their CPU follows, which delays the sends after them: the loopback round trip (probed with a
        client) already holds a request's own path."""
        wake = (CPU, self.client_wake, None)
        if self.lg_shared:
            steps.append(wake)
        while jobs:
            self._lg_job(steps, jobs.popleft())
        if not self.lg_shared:
            steps.append(wake)

    def _lg_job(self, steps, req: Request) -> None:
        conn = req.slot.conn if req.slot is not None else None
        opens = conn is None or conn.eof or conn.closed
        cost = (CPU, self.client_cpu + (self.client_conn if opens else 0.0), None)
        if self.lg_shared:
            steps.append(cost)
            steps.append((CALL, self._lg_sent, req))
        else:
            steps.append((CALL, self._lg_sent, req))
            steps.append(cost)

    def _lg_sent(self, th, req) -> None:
        if self.open and self.w0 <= req.t < self.w1:
            self.send_lag_s.append(self.env._now - req.t)
        self._transmit(req)

    def _lg_arm(self, th, _) -> None:
        """The generator arms its loop timer for the next send due (sendtimer's rule), or none: no
        more arrivals come, or no client is thinking."""
        self.lg_armed = False
        now = self.env._now
        if self.open:
            due = self.undispatched[0].t if self.undispatched else self.next_arrival_t
            if due >= self.w1 and not self.undispatched:
                return
        elif self.thinking:
            due = self.thinking[0][0]
        else:
            return
        delay = wake_delay_s(now, due, SHARED_TIMER_RESOLUTION_S)
        self.lg_wake_t = loop_timer_fire_s(now, delay, self.lg_rng.random())
        self._at(self.lg_wake_t - now, self._lg_timer_fired, None)

    def _lg_timer_fired(self, value) -> None:
        self.lg_machine.wake(self.lg)

    # -- network events --------------------------------------------------------------------------
    def _syn_arrives(self, value) -> None:
        req = value
        conn = req.conn
        if req.state != PENDING or conn.eof:
            self._connect_done()  # the client gave up meanwhile
            return
        if self._packet(self.model.syn, conn):
            self._connect_done()
            # established; the request follows once the client's event loop sees the connect complete
            self._at(self.client_step, self._data_arrives, req)
            return
        tries = conn.syn_tries
        if tries >= len(SYN_RETRY_DELAYS_S):
            self._connect_done()
            self._fail(req, "refused")
            return
        conn.syn_tries = tries + 1
        self._at(SYN_RETRY_DELAYS_S[tries], self._syn_arrives, req)

    def _data_arrives(self, value) -> None:
        req = value
        conn = req.conn
        if req.state != PENDING:
            return  # the client gave up (timeout) before the request went out
        if conn.closed:
            # the server closed this connection meanwhile (keep-alive timeout): the client sees a reset
            self._fail(req, "reset")
            return
        conn.req = req
        self._packet(self.model.on_data, conn)

    def _packet(self, handler, conn):
        """handler(conn) as the server's kernel runs it: on the core that processes the packet, which
        is where the threads it wakes are woken from (simkit.machine)."""
        m = self.model.machine
        prev, m.src = m.src, m.net_core()
        try:
            return handler(conn)
        finally:
            m.src = prev

    # -- outcomes ---------------------------------------------------------------------------------
    def respond(self, conn: Conn, req: Request, t: float) -> None:
        """The server sent `req`'s response at time t (>= now): it reaches the client half an RTT later.

        Fast path (no event for the receipt): when nothing can happen to the request between now and
        its receipt at t_recv (it is in time, before the window ends, on a connection that stays
        open), the receipt is booked now at its exact time t_recv, and the closed-loop slot's next
        request is issued at t_recv + think_s directly (one event per request on the client side)."""
        now = self.env._now
        t_recv = t + self.half_rtt
        if self.lg is not None and self.lg_shared:
            req.src = self.lg_machine.src  # loopback processes the answer on the sender's core
        # (Open loop has no fast path: its slot must not look free before t_recv, or arrivals would be
        # sent to a connection whose server thread is still busy.)
        if (self.fast_closed and req.state == PENDING and t_recv < self.w1 and t_recv - req.t < self.timeout_s
                and not req.close and req.slot.cur is req):
            self._complete(req, t_recv)
            slot = req.slot
            t_next = t_recv + self.think_s
            if t_next >= self.w1:
                slot.cur = None
                return  # the run ends before the slot's next request
            nxt = self._new_request(t_next, slot)
            slot.cur = nxt
            conn.nreq += 1
            nxt.conn = conn
            conn.creq = nxt
            if self.rpc is not None and conn.nreq >= self.rpc:
                nxt.close = True
            self._at(t_next - now + self.half_rtt, self._data_arrives, nxt)
            return
        self._at(t_recv - now, self._receipt, req)

    def _complete(self, req: Request, t: float) -> None:
        req.state = DONE
        t0 = req.t
        if self.w0 <= t < self.w1:  # the real load generator's view: completions inside the window
            self.latencies_in_window.append(t - t0)
        if self.w0 <= t0 < self.w1:
            self.completed += 1
            self.latencies.append(t - t0)
        self.area += _overlap(t0, t, self.w0, self.w1)

    def _receipt(self, value) -> None:
        req = value
        if req.state != PENDING:
            return  # timed out earlier; the client had moved on
        if req.src is None:
            self._received(req)
            return
        m = self.lg_machine
        prev, m.src = m.src, req.src  # the generator is woken from the core that processed the answer
        self._received(req)
        m.src = prev

    def _received(self, req: Request) -> None:
        self._complete(req, self.env._now)
        slot = req.slot
        if req.close:
            conn = req.conn
            if slot.conn is conn:
                slot.conn = None
            if not conn.eof and not conn.closed:
                # the client closes after its last answer, once its event loop has handled it; the
                # FIN reaches the server half an RTT later (it sees EOF on its next recv)
                conn.eof = True
                self._at(self.client_step + self.half_rtt, self._eof_arrives, conn)
        self._next(slot, 0.0)

    def reset(self, conn: Conn) -> None:
        """The server closed `conn` without answering its request (e.g. could not start a thread)."""
        req = conn.creq
        conn.closed = True
        if req is not None and req.state == PENDING:
            self._at(self.half_rtt, self._reset_seen, req)

    def _reset_seen(self, value) -> None:
        req = value
        if req.state == PENDING:
            self._fail(req, "reset")

    def _fail(self, req: Request, kind: str) -> None:
        now = self.env._now
        req.state = FAILED
        if self.w0 <= req.t < self.w1:
            if kind == "timeout":
                self.err_timeout += 1
            elif kind == "refused":
                self.err_refused += 1
            else:
                self.err_reset += 1
        self.area += _overlap(req.t, now, self.w0, self.w1)
        slot = req.slot
        if slot is None:
            return  # open loop: still waiting in the client's queue
        if slot.cur is not req:
            return
        conn = slot.conn
        if conn is not None:
            slot.conn = None
            if not conn.eof and not conn.closed:
                conn.eof = True  # the client closes it; the server sees EOF half an RTT later
                if conn.accepted:
                    self._at(self.half_rtt, self._eof_arrives, conn)
        self._next(slot, 0.0 if kind == "timeout" else RECONNECT_BACKOFF_S)

    def _eof_arrives(self, value) -> None:
        conn = value
        if not conn.closed:
            self._packet(self.model.on_data, conn)

    def _next(self, slot: Slot, backoff: float) -> None:
        slot.cur = None
        if self.open:
            if backoff > 0:
                self._at(backoff, self._slot_free, slot)
            else:
                self._free(slot)
            return
        delay = self.think_s + backoff
        if delay > 0:
            if self.lg_timer and not backoff:  # its think time ends on the generator's timer
                self.thinking.append((self.env._now + delay, slot))
                if not self.lg_armed and self.lg_wake_t == float("inf"):
                    self._lg_arm(None, None)
                return
            self._at(delay, self._start_slot, slot)
        else:
            self._issue(slot)

    def _slot_free(self, value) -> None:
        self._free(value)

    def _free(self, slot: Slot) -> None:
        q = self.queue
        while q:
            req = q.popleft()
            if req.state == PENDING:
                req.slot = slot
                self._send(slot, req)
                return
        self.free_slots.append(slot)

    # -- timeouts ---------------------------------------------------------------------------------
    def _arm_sweep(self) -> None:
        dq = self.deadlines
        while dq and dq[0][2].state != PENDING:
            heapq.heappop(dq)
        if dq:
            self.sweep_armed = True
            self._at(max(0.0, dq[0][0] + self.timeout_s - self.env._now), self._sweep, None)

    def _sweep(self, value) -> None:
        self.sweep_armed = False
        dq = self.deadlines
        limit = self.env._now - self.timeout_s + 1e-12
        while dq:
            t, _, req = dq[0]
            if req.state != PENDING:
                heapq.heappop(dq)
            elif t <= limit:
                heapq.heappop(dq)
                self._fail(req, "timeout")
            else:
                break
        self._arm_sweep()

    # -- end of run -------------------------------------------------------------------------------
    def finish(self, t_end: float) -> int:
        """Close the books at t_end: add in-flight requests' time in system; return the cohort in flight."""
        in_flight = 0
        for _, _, req in self.deadlines:
            if req.state == PENDING:
                self.area += _overlap(req.t, t_end, self.w0, self.w1)
                if self.w0 <= req.t < self.w1:
                    in_flight += 1
        return in_flight


def client_step_s(profile) -> float:
    """The generator's time for one request alone: a wake-up of its loop and the request."""
    return profile["client_cpu_per_wake_s"] + profile["client_cpu_per_request_s"]


def first_connect_gap_s(workload, client_cpu_per_request_s: float) -> float:
    """Seconds between two clients' first connects: closed loop, 1 / connect_rate_cps, but never less
    than the generator's time per connect; open loop (connections opened by arrivals), the latter."""
    gap = client_cpu_per_request_s
    if workload.mode == "closed" and workload.connect_rate_cps is not None:
        gap = max(gap, 1.0 / workload.connect_rate_cps)
    return gap


def connect_ramp_s(workload, profile) -> float:
    """How long the clients take to first connect (the start-up ramp): the last of `connections`
    evenly spaced arrivals. A measurement window that starts before it ends sees a start-up, not a
    steady state."""
    return workload.connections * first_connect_gap_s(workload, client_step_s(profile)
                                                      + profile["client_cpu_per_conn_s"])


def _overlap(a: float, b: float, w0: float, w1: float) -> float:
    lo = max(a, w0)
    hi = min(b, w1)
    return hi - lo if hi > lo else 0.0
