"""The machine: cores with a run queue, context-switch and wake-up costs, time slicing, a GIL per
process, and a memory ledger (docs/DESIGN.md §6).

Speed is a design constraint (a 100k-connection, 64-core scenario must run in seconds), so this is
not one SimPy process per thread. It is a callback engine on a simpy.Environment (simkit.events):

- A Thread owns a deque of STEPS, tuples (kind, a, b):
    (CPU, seconds, _)     on-core work with the GIL released (syscalls, cpu_us work)
    (GIL, seconds, _)     on-core work holding the GIL (parsing, gil_us work)
    (SLEEP, seconds, _)   off-core wait (time.sleep for io_us)
    (CALL, fn, arg)       fn(thread, arg) at the exact simulated time it is reached (hand-offs)
    (SEND, conn, req)     the response leaves: a deferred action at its exact virtual time
  and a `program(thread) -> bool` that the engine calls when the steps run out: it appends the next
  steps (True) or arranges to be woken later and returns False (the thread blocks).
- While a thread holds a core, consecutive CPU steps are merged into ONE burst, i.e. one SimPy
  event, up to `time_slice_s`. SEND steps inside a burst are resolved at their virtual time inside
  it (the burst cannot be preempted part-way, so the time is exact). Bursts end at SLEEP, CALL, a
  GIL state change, the slice limit, or when the program must decide (epoll_wait, accept, ...).
- The GIL is only tracked in processes where it can be contended (gil=True and more than one
  thread may run Python code): there a GIL burst and a released burst are separate, a thread
  waiting for the GIL is off-core, a waiter forces the holder to drop the GIL after
  gil_switch_interval_s (the holder's burst is interrupted, the rest re-queued), and each hand-off
  costs the receiver gil_handoff_s. Every release with waiters hands the GIL to the first of
  them, even around a short syscall (recv, send): the releaser queues behind them when it is back.
  CPython's code (Python/ceval_gil.c) frees the GIL and signals one waiter, so a thread that asks
  while the waiter wakes may barge in; on this project's measurements the convoy is what shows:
  thread-per-connection with 2 ms of io on 2 cores ran at 4,276-4,756 req/s, 244-274 us of CPU and
  ~9.5 voluntary switches per request; barging in the simulator gave 2.6x that throughput, the
  FIFO hand-off within 10% (calibration's GIL mechanism rows and docs/DESIGN.md keep the figures).
  On one core, a waiter signalled by a thread that keeps the core cannot run, so that thread takes
  the GIL back (a reactor with a worker pool switched 4 times a request under the hand-off, real
  ones 0.3-0.4 times).
  Single-thread processes (m1, m3, m6 workers) never contend, so their bursts merge across GIL
  states (the GIL costs nothing there, as in CPython).
- Scheduling: a runnable thread takes a free core (its last core if free: no cache/IPI cost),
  else waits in the run queue: threads just woken (from I/O, sleep, a GIL hand-off) go ahead of
  threads preempted at the end of their slice up to one slice earlier (no starvation either way),
  as CFS favours sleepers over CPU hogs (this matters
  for the GIL: the thread it is handed to must run soon, or the GIL idles). A core that switches to a different thread charges
  ctx_switch_s; a woken thread placed on a core other than the waker's charges wakeup_s (the IPI
  and the remote wake-up path). The waker: the running thread for a wake issued from its program or
  a CALL step (a hand-off to a worker, a job done); the core that processes the packet for a request
  or a connection arriving (loopback's softirq runs on the sender's core: the load generator's, on
  CPUs of its own, or the core its thread last ran on where it shares the server's); the thread's
  own last core for its timers (a sleep's end). At each
  burst end, a thread that has run for >= time_slice_s while others wait goes to the queue's tail.
- Context switches counted (ctx_switches_per_s) are threads leaving a core, voluntary or not,
  as /proc's voluntary + nonvoluntary counters count them.
"""

from __future__ import annotations

import math
import random
from collections import deque
from heapq import heappush

from simpy.events import NORMAL

from simkit.events import at

CPU, GIL, SLEEP, CALL, SEND = range(5)


def overlap(a: float, b: float, w0: float, w1: float) -> float:
    lo = a if a > w0 else w0
    hi = b if b < w1 else w1
    return hi - lo if hi > lo else 0.0


class Core:
    __slots__ = ("id", "thread", "last", "since", "busy", "idle_from", "next_pause")

    def __init__(self, cid: int) -> None:
        self.id = cid
        self.thread = None
        self.last = None
        self.since = 0.0
        self.busy = 0.0
        self.idle_from = 0.0  # when it last went idle (no thread on it)
        self.next_pause = 0.0  # when this core's next pause starts (Machine._paused)


class Proc:
    """A process: its GIL, its fds (RLIMIT_NOFILE applies per process) and its threads."""

    __slots__ = ("pid", "gil_tracked", "gil_holder", "gil_waiters", "gil_timer", "gil_since", "gil_busy",
                 "gil_switches", "gil_free_at", "settle_armed", "fds", "fd_limit", "fd_waiters", "threads")

    def __init__(self, pid: int, gil_tracked: bool, fd_limit: int) -> None:
        self.pid = pid
        self.gil_tracked = gil_tracked
        self.gil_holder = None
        self.gil_waiters: deque = deque()
        self.gil_timer = False
        self.gil_since = 0.0
        self.gil_busy = 0.0
        self.gil_switches = 0
        self.gil_free_at = 0.0  # the holder's virtual release time when holder.vrel
        self.settle_armed = False
        self.fds = 0
        self.fd_limit = fd_limit
        self.fd_waiters: list = []
        self.threads = 0


class Thread:
    __slots__ = ("proc", "steps", "program", "core", "last_core", "has_gil", "gen", "run_start", "burst_end",
                 "burst_gil", "blocked", "gil_wait", "rewake", "pending", "loadgen", "drop_req", "obj", "alive", "vrel")

    def __init__(self, proc: Proc, program, obj=None, loadgen: bool = False) -> None:
        self.proc = proc
        self.steps: deque = deque()
        self.program = program
        self.core = None
        self.last_core = None
        self.has_gil = False
        self.gen = 0
        self.run_start = 0.0
        self.burst_end = -1.0
        self.burst_gil = False
        self.blocked = True
        self.gil_wait = False  # blocked in the GIL's queue: only a hand-off wakes it
        self.rewake = False  # woken while leaving its core: runnable again as soon as it is off
        self.pending = 0.0  # overhead (switch, wake-up, hand-off) charged to the next burst
        self.loadgen = loadgen
        self.drop_req = False
        self.obj = obj  # the model object this thread runs (reactor, connection, ...)
        self.alive = True
        self.vrel = False  # holds the GIL only until proc.gil_free_at (released inside its burst)


class Ledger:
    """Memory, thread, process and fd accounting; the first limit crossed is the run's failure.

    `rss` is the processes' resident memory, what /proc reports and Result.rss_peak_bytes carries; a
    socket's kernel memory (buffers, slab objects) is not in any process's RSS, but it takes the box's
    memory all the same, so the memory limit is checked against rss + kernel.

    A server is one process tree started by one exec: the first process is a fresh interpreter
    (rss_process_bytes); every later one is forked from it (a pre-fork worker) and adds
    rss_worker_bytes. A forked child maps its parent's anonymous pages, counted again in its own RSS,
    but only the file pages (interpreter, libraries) it touches itself, so it adds less than a fresh
    process; /proc's per-process RSS, summed over the tree, shows exactly that."""

    __slots__ = ("p_proc", "p_worker", "p_thread", "p_conn", "k_conn", "threads_max", "memory_bytes", "threads",
                 "procs", "conns", "fds", "rss", "kernel", "rss_peak", "threads_peak", "procs_peak", "fds_peak",
                 "failure")

    def __init__(self, profile, hardware) -> None:
        self.p_proc = int(profile["rss_process_bytes"])
        self.p_worker = int(profile["rss_worker_bytes"])
        self.p_thread = int(profile["rss_thread_bytes"])
        self.p_conn = int(profile["rss_conn_bytes"])
        self.k_conn = int(profile["kernel_bytes_per_socket"])
        self.kernel = 0
        self.threads_max = hardware.threads_max
        self.memory_bytes = hardware.memory_bytes
        self.threads = self.procs = self.conns = self.fds = 0
        self.rss = self.rss_peak = self.threads_peak = self.procs_peak = self.fds_peak = 0
        self.failure = ""

    def fail(self, why: str) -> None:
        if not self.failure:
            self.failure = why

    def _mem(self, delta: int, kernel: int = 0) -> bool:
        if delta + kernel > 0 and self.rss + self.kernel + delta + kernel > self.memory_bytes:
            self.fail("memory")  # ENOMEM / the OOM killer's territory: refuse the allocation
            return False
        self.rss += delta
        self.kernel += kernel
        if self.rss > self.rss_peak:
            self.rss_peak = self.rss
        return True

    def add_threads(self, n: int = 1) -> bool:
        if self.threads + n > self.threads_max:
            self.fail("threads_max")
            return False
        if not self._mem(n * self.p_thread):
            return False
        self.threads += n
        if self.threads > self.threads_peak:
            self.threads_peak = self.threads
        return True

    def del_threads(self, n: int = 1) -> None:
        self.threads -= n
        self.rss -= n * self.p_thread

    def add_proc(self, base_fds: int) -> bool:
        """The first process is the exec'd server; later ones are forked from it (see the class)."""
        if not self._mem(self.p_worker if self.procs_peak else self.p_proc):
            return False
        self.procs += 1
        self.procs_peak = max(self.procs_peak, self.procs)
        self.add_fds(base_fds)
        return True

    def add_fds(self, n: int) -> None:
        self.fds += n
        if self.fds > self.fds_peak:
            self.fds_peak = self.fds

    def add_conns(self, n: int = 1) -> bool:
        if not self._mem(n * self.p_conn, n * self.k_conn):
            return False
        self.conns += n
        self.add_fds(n)
        return True

    def del_conns(self, n: int = 1) -> None:
        self.conns -= n
        self.fds -= n
        self.rss -= n * self.p_conn
        self.kernel -= n * self.k_conn


class StartupFailure(Exception):
    """The server cannot even start within the scenario's limits (memory, threads_max)."""


class Machine:
    """Cores, run queue, GILs and the ledger; drives Threads through their steps."""

    def __init__(self, env, profile, hardware, w0: float, w1: float, send_cb, seed: int = 1) -> None:
        self.env = env
        self.ctx_s = profile["ctx_switch_s"]
        self.wake_s = profile["wakeup_s"]
        self.slice_s = profile["time_slice_s"] or math.inf
        self.gil_interval = profile["gil_switch_interval_s"] or math.inf
        self.gil_handoff = profile["gil_handoff_s"]
        self.idle_wake_s = profile["idle_wakeup_s"]
        self.idle_tau_s = profile["idle_wakeup_tau_s"]
        self.slow_p = min(1.0, profile["idle_wakeup_slow_p"])
        self.slow_s = profile["idle_wakeup_slow_s"]
        self.idle_model = self.idle_wake_s > 0.0 or self.slow_p > 0.0  # else _idle_wakeup is always 0
        # The slow wake-ups' own stream: a profile without them draws nothing, so its runs are unchanged.
        self.wake_rng = random.Random(seed + 0x5EED)
        self.pause_rate = profile["core_pauses_per_s"]
        self.pause_mean = profile["core_pause_mean_s"]
        self.pauses = self.pause_rate > 0.0 and self.pause_mean > 0.0
        self.pause_rng = random.Random(seed + 0x9A05E)  # its own stream, as the slow wake-ups'
        self.cores = [Core(i) for i in range(hardware.cores)]
        # one core: a waiter signalled while the releaser keeps running cannot run (_gil_release)
        self.one_core = hardware.cores == 1
        self.free: set[int] = set(range(hardware.cores))
        # Run queue as two FIFOs of (thread, key); the core takes the smaller key. Woken threads (from
        # I/O, sleep, a GIL hand-off) have key = when they woke; preempted ones key = when preempted +
        # one slice. So sleepers go ahead of CPU hogs, as under CFS, and neither side starves.
        self.runq: deque = deque()
        self.wokenq: deque = deque()
        self.runq_delay = 0.0 if self.slice_s == math.inf else self.slice_s
        self.w0, self.w1 = w0, w1
        self.ctx_count = 0
        self.loadgen_busy = 0.0
        self.ledger = Ledger(profile, hardware)
        self.procs: list[Proc] = []
        self.fd_limit = hardware.fd_limit
        self.send_cb = send_cb  # send_cb(conn, req, t): a response left the server at time t
        self.starting = True  # while the model builds itself, a refused process/thread is fatal
        self.remote = Core(-1)  # a core outside the server's: the load generator's own CPUs
        self.net_thread: Thread | None = None  # the load generator's thread, where it shares the cores
        self.src: Core | None = None  # the waker's core while a program, CALL or packet runs (wake())
        self.burst_done_cb = self._burst_done  # bound once: a burst's end is scheduled per step run

    # -- processes and threads ---------------------------------------------------------------
    def new_proc(self, gil_tracked: bool, base_fds: int = 6) -> Proc | None:
        """base_fds: stdin/out/err, the listen socket, epoll and wake-up fds of a server process."""
        if not self.ledger.add_proc(base_fds):
            if self.starting:
                raise StartupFailure(self.ledger.failure)
            return None
        proc = Proc(len(self.procs), gil_tracked, self.fd_limit)
        proc.fds = base_fds
        self.procs.append(proc)
        return proc

    def new_thread(self, proc: Proc, program, obj=None, start: bool = True, loadgen: bool = False):
        """A new thread (ledger-checked: None when threads_max or memory refuses it)."""
        if not loadgen and not self.ledger.add_threads(1):
            if self.starting:
                raise StartupFailure(self.ledger.failure)
            return None
        th = Thread(proc, program, obj, loadgen)
        proc.threads += 1
        if start:
            self.wake(th)
        return th

    def exit_thread(self, th: Thread) -> None:
        """Called from a thread's own program (it then returns False and never runs again)."""
        th.alive = False
        th.proc.threads -= 1
        if not th.loadgen:
            self.ledger.del_threads(1)

    def park(self, th: Thread) -> None:
        """From a CALL step: th blocks until something wakes it (it drops the GIL if it holds it)."""
        self._block(th)

    def net_core(self) -> Core:
        """The core a packet from the clients is processed on (module docstring)."""
        lg = self.net_thread
        return lg.last_core if lg is not None and lg.last_core is not None else self.remote

    def wake(self, th: Thread, src: Core | None = None) -> None:
        """src: the waker's core; None: the current waker (self.src: a running thread, a packet), else
        th's own last core (its timer)."""
        if src is None:
            src = self.src
        if th.blocked and th.alive and not th.gil_wait:
            if th.core is not None:  # still leaving its core (see _block): runnable once it is off
                th.rewake = True
                return
            th.blocked = False
            self._runnable(th, True, src)

    # -- scheduling ------------------------------------------------------------------------------
    def _runnable(self, th: Thread, woken: bool, src: Core | None = None) -> None:
        free = self.free
        if free:
            last = th.last_core
            if last is not None and last.id in free:
                free.discard(last.id)
                core = last
            else:
                core = self.cores[min(free)] if len(free) < 8 else self.cores[free.pop()]
                free.discard(core.id)
            # Waking onto a core other than the waker's (an idle one) takes an IPI and the scheduler's
            # wake-up path there: a GIL hand-off between cores pays it, on one core it never does.
            ref = src if src is not None else last
            if woken and ref is not None and ref is not core:
                th.pending += self.wake_s
            delay = self._idle_wakeup(core, th) if woken and self.idle_model else 0.0
            if delay > 1e-6:  # below a microsecond it is noise, not worth an event
                at(self.env, delay, self._assign_ev, (core, th))  # the core is taken, not yet running anything
                return
            self._assign(core, th)
        elif woken:
            if src is not None and th.last_core is not None and src is not th.last_core:
                # queued on a busy core: the IPI and remote wake-up all the same (a new thread, with
                # no core yet, queues on its parent's)
                th.pending += self.wake_s
            self.wokenq.append((th, self.env._now))
        else:
            self.runq.append((th, self.env._now + self.runq_delay))

    def _idle_wakeup(self, core: Core, th: Thread) -> float:
        """A thread woken onto a core idle since core.idle_from: idle states, a VM's halted vCPU and the
        serving path's cold caches cost it idle_wakeup_s x f of CPU on that core (f = 1 - exp(-idle /
        tau): the longer the core slept, the more; probed as a reactor's CPU per request after it
        slept, calibration.probes). A share slow_p x f of wake-ups are slow as well (the host had
        descheduled the halted vCPU): the core is held, not running, for an exponential delay of mean
        idle_wakeup_slow_s, returned here; it is a lightly loaded server's latency tail."""
        idle = self.env._now - core.idle_from
        if idle <= 0.0:
            return 0.0
        f = 1.0 if self.idle_tau_s <= 0.0 else -math.expm1(-idle / self.idle_tau_s)
        th.pending += self.idle_wake_s * f
        if self.slow_p > 0.0 and self.slow_s > 0.0 and self.wake_rng.random() < self.slow_p * f:
            return self.wake_rng.expovariate(1.0 / self.slow_s)
        return 0.0

    def _assign_ev(self, value) -> None:
        core, th = value
        self._assign(core, th)

    def _assign(self, core: Core, th: Thread) -> None:
        now = self.env._now
        core.thread = th
        core.since = now
        if core.last is not th:
            th.pending += self.ctx_s
            core.last = th
        th.core = core
        th.last_core = core
        th.run_start = now
        self._advance(th)

    def _release(self, th: Thread) -> None:
        core = th.core
        th.core = None
        now = self.env._now
        lo, hi = core.since, now  # overlap(), inlined (a core is released per burst)
        if lo < self.w0:
            lo = self.w0
        if hi > self.w1:
            hi = self.w1
        busy = hi - lo if hi > lo else 0.0
        if th.loadgen:
            self.loadgen_busy += busy
        else:
            core.busy += busy
        if self.w0 <= now < self.w1:
            self.ctx_count += 1
        core.thread = None
        runq, wokenq = self.runq, self.wokenq
        if wokenq and (not runq or wokenq[0][1] <= runq[0][1]):
            self._assign(core, wokenq.popleft()[0])
        elif runq:
            self._assign(core, runq.popleft()[0])
        else:
            core.idle_from = now
            self.free.add(core.id)

    def _block(self, th: Thread) -> None:
        """th leaves its core and waits (its program decided so). It drops the GIL first, waking the
        next holder while th still has its core (CPython signals the waiter, then th enters its
        syscall), so the kernel places the wakee on another core. A wake-up sent to th meanwhile (the
        new holder hands th, a worker, a job at once) is kept in th.rewake, not lost."""
        th.blocked = True
        if th.has_gil:
            self._gil_release(th, leaving=True)
        self._release(th)
        if th.rewake:
            th.rewake = False
            self.wake(th)

    # -- the executor ------------------------------------------------------------------------------
    def _advance(self, th: Thread) -> None:
        """Run `th` (on a core, at env.now) through its steps until it blocks or a burst is scheduled."""
        steps = th.steps
        t = th.pending
        th.pending = 0.0
        proc = th.proc
        tracked = proc.gil_tracked
        if th.vrel:
            self._settle(proc)
        slice_s = self.slice_s
        now = self.env._now
        bg = None  # tracked processes: is this burst GIL-held (True) or released (False)?
        while True:
            if not steps:
                if t > 0.0:
                    break
                prev, self.src = self.src, th.core
                more = th.program(th)
                self.src = prev
                if not more:
                    if th.core is not None:
                        self._block(th)
                    return
                continue
            kind, a, b = steps[0]
            if kind == CPU or (kind == GIL and not tracked):
                if tracked:
                    if bg is True:
                        if t >= self.gil_interval:
                            break
                        if t > 0.0:
                            # GIL part done: release it at its virtual end time inside this burst, so a
                            # request's Python part and its GIL-free part cost one event, not two
                            th.vrel = True
                            proc.gil_free_at = now + t
                            if proc.gil_waiters and not proc.settle_armed:
                                self._arm_settle(proc, t)
                        else:
                            self._gil_release(th)
                    elif th.has_gil and not th.vrel:
                        if t > 0.0:
                            break
                        self._gil_release(th)
                    bg = False
                room = slice_s - t
                if a > room:
                    if t > 0.0:
                        break
                    steps[0] = (kind, a - room, b)  # a long burst is sliced
                    t = slice_s
                    break
                steps.popleft()
                t += a
                if t >= slice_s:
                    break
            elif kind == GIL:
                if bg is False:
                    break
                if not th.has_gil:
                    if t > 0.0:
                        break
                    holder = proc.gil_holder
                    if holder is not None and holder.vrel:
                        self._settle(proc)
                        holder = proc.gil_holder
                    if holder is None:  # _gil_take, inlined
                        proc.gil_holder = th
                        proc.gil_since = now
                        th.has_gil = True
                    else:
                        self._gil_wait(th)
                        return
                if th.drop_req:
                    th.drop_req = False
                    if proc.gil_waiters and t == 0.0:
                        self._gil_release(th, leaving=True)
                        self._gil_wait(th)
                        return
                bg = True
                room = slice_s - t
                if a > room:
                    if t > 0.0:
                        break
                    steps[0] = (kind, a - room, b)
                    t = slice_s
                    break
                steps.popleft()
                t += a
                if t >= slice_s:
                    break
            elif kind == SEND:
                steps.popleft()
                if self.pauses:
                    t = self._paused(th.core, now, t)
                prev, self.src = self.src, th.core  # the answer's packet is processed on this core
                self.send_cb(a, b, now + t)
                self.src = prev
            elif kind == SLEEP:
                if t > 0.0:
                    break
                steps.popleft()
                self._block(th)
                at(self.env, a, self._wake_ev, th)
                return
            else:  # CALL
                if t > 0.0:
                    break
                steps.popleft()
                prev, self.src = self.src, th.core
                a(th, b)
                self.src = prev
                if th.core is None:  # the call blocked or ended the thread
                    return
        if self.pauses:
            t = self._paused(th.core, now, t)
        th.gen += 1
        th.burst_end = end = now + t
        th.burst_gil = bg is True
        env = self.env  # events.at, inlined: the commonest event of all
        heappush(env._queue, (end, NORMAL, next(env._eid), self.burst_done_cb, (th, th.gen)))

    def _paused(self, core: Core, now: float, t: float) -> float:
        """A burst from `now` that has reached `t`, lengthened by the core's pauses that start inside it:
        a Poisson process of core_pauses_per_s per core, each pause exponential of mean core_pause_mean_s
        (the box's interrupts and, on a VM, the host running something else: calibration.probes
        measures them on a spinning thread). The thread keeps its core and whatever it holds (the GIL
        too) and makes no progress meanwhile; a pause on an idle core is never seen."""
        nxt = core.next_pause
        rng = self.pause_rng
        if nxt < now:
            nxt = now + rng.expovariate(self.pause_rate)
        while nxt < now + t:
            t += rng.expovariate(1.0 / self.pause_mean)
            nxt += rng.expovariate(self.pause_rate)
        core.next_pause = nxt
        return t

    def _wake_ev(self, value) -> None:
        th = value
        self.wake(th, th.last_core)  # a sleep's end: its timer fires on the core it slept on

    def _burst_done(self, value) -> None:
        th, gen = value
        if gen != th.gen:
            return  # interrupted (GIL drop): superseded
        th.burst_gil = False
        if (self.wokenq or self.runq) and self.env._now - th.run_start >= self.slice_s:
            # time slice used up while others wait: to the run queue's tail
            self.runq.append((th, self.env._now + self.runq_delay))
            self._release(th)
            return
        self._advance(th)

    # -- the GIL -----------------------------------------------------------------------------------
    def _gil_take(self, proc: Proc, th: Thread) -> None:
        proc.gil_holder = th
        proc.gil_since = self.env._now
        th.has_gil = True

    def _settle(self, proc: Proc) -> None:
        """A holder that released the GIL virtually inside its burst: make it real once its time came."""
        holder = proc.gil_holder
        if holder is not None and holder.vrel and self.env._now >= proc.gil_free_at:
            self._gil_release(holder, proc.gil_free_at)

    def _arm_settle(self, proc: Proc, delay: float) -> None:
        proc.settle_armed = True
        at(self.env, delay, self._settle_ev, proc)

    def _settle_ev(self, value) -> None:
        proc = value
        proc.settle_armed = False
        self._settle(proc)

    def _gil_release(self, th: Thread, when: float | None = None, leaving: bool = False) -> None:
        """Release (when: the virtual time it happened inside th's burst). With waiters, the first is
        signalled and takes the GIL: a FIFO hand-off (it holds the GIL while it gets going: the
        convoy; the module docstring says why not CPython's barging). Except on one core when th
        keeps running (a short syscall, GIL-free work; not leaving: blocking, a forced drop): the
        waiter cannot run before th leaves the core, so th takes the free GIL back at its next Python
        step; the waiter wakes into the run queue without it and, when it runs, takes the GIL if it
        is free, else waits again."""
        proc = th.proc
        th.has_gil = False
        th.vrel = False
        now = self.env._now
        lo, hi = proc.gil_since, now if when is None else when  # overlap(), inlined (a release per GIL step)
        if lo < self.w0:
            lo = self.w0
        if hi > self.w1:
            hi = self.w1
        if hi > lo:
            proc.gil_busy += hi - lo
        if proc.gil_waiters:
            nxt = proc.gil_waiters.popleft()
            nxt.gil_wait = False
            if leaving or not self.one_core:
                proc.gil_switches += 1
                self._gil_take(proc, nxt)
                nxt.pending += self.gil_handoff
            else:
                proc.gil_holder = None
            self.wake(nxt, th.core or th.last_core)
        else:
            proc.gil_holder = None

    def _gil_wait(self, th: Thread) -> None:
        proc = th.proc
        proc.gil_waiters.append(th)
        th.gil_wait = True
        th.blocked = True
        self._release(th)
        holder = proc.gil_holder
        if holder is not None and holder.vrel and not proc.settle_armed:
            # the holder is past its GIL part at gil_free_at: hand over then
            self._arm_settle(proc, max(0.0, proc.gil_free_at - self.env._now))
        if not proc.gil_timer:
            self._gil_arm(proc)

    def _gil_arm(self, proc: Proc) -> None:
        proc.gil_timer = True
        at(self.env, self.gil_interval, self._gil_timeout, (proc, proc.gil_switches))

    def _gil_timeout(self, value) -> None:
        """A waiter waited a switch interval: if no hand-off happened meanwhile, force a drop."""
        proc, switches = value
        proc.gil_timer = False
        self._settle(proc)
        if not proc.gil_waiters:
            return
        holder = proc.gil_holder
        if holder is not None and holder.vrel:
            if not proc.settle_armed:
                self._arm_settle(proc, max(0.0, proc.gil_free_at - self.env._now))
            self._gil_arm(proc)
            return
        if switches != proc.gil_switches or holder is None:
            self._gil_arm(proc)
            return
        now = self.env._now
        if holder.core is not None and holder.burst_gil and holder.burst_end > now:
            # interrupt the holder's GIL burst; it re-queues for the GIL behind the waiters
            holder.gen += 1
            holder.burst_gil = False
            holder.steps.appendleft((GIL, holder.burst_end - now, None))
            self._gil_release(holder, leaving=True)
            self._gil_wait(holder)
        else:
            holder.drop_req = True  # it drops at its next GIL step (e.g. when it gets a core)
            self._gil_arm(proc)

    # -- end of run ------------------------------------------------------------------------------
    def finish(self) -> None:
        now = self.env._now
        for core in self.cores:
            th = core.thread
            if th is not None:
                busy = overlap(core.since, now, self.w0, self.w1)
                if th.loadgen:
                    self.loadgen_busy += busy
                else:
                    core.busy += busy
                core.since = now
        for proc in self.procs:
            if proc.gil_holder is not None:
                end = min(now, proc.gil_free_at) if proc.gil_holder.vrel else now
                proc.gil_busy += overlap(proc.gil_since, end, self.w0, self.w1)
                proc.gil_since = now
