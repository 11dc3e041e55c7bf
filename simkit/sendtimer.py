"""When the load generator sends (docs/DESIGN.md §6): one rule that realkit's generator runs and simkit's
clients model, so an open-loop latency (timed from the intended send) holds the same send lag on both
sides. Constants and pure functions only: realkit imports this module, as it imports the contract.

The generator's event loop (uvloop on libuv) keeps its clock in whole milliseconds and rounds timer
delays to whole milliseconds, so a timer fires up to about 1 ms either side of the asked time
(loop_timer_fire_s). Two ways to wait for a send (an open-loop arrival, the end of a think time):
- on CPUs of its own (timer_resolution_s 0), sleep on the timer until POLL_WINDOW_S before the send is
  due, then poll the loop (still serving I/O) until it is: on time to a loop iteration (microseconds),
  for polling CPU bounded to that window. The simulator sends exactly on time there;
- sharing the server's CPUs (SHARED_TIMER_RESOLUTION_S) a polling generator would take the server's
  CPU, so it sleeps at least that long between wakes and sends everything due at each: sends are late
  by about half a millisecond and more, on a grid, and the simulator models that rule and lag.
"""

from __future__ import annotations

import math

LOOP_CLOCK_S = 0.001  # the event loop's clock tick (libuv: uv_now() in ms)
SHARED_TIMER_RESOLUTION_S = 0.001  # the generator's shortest sleep when it shares the server's CPUs
POLL_WINDOW_S = 0.0015  # on its own CPUs: poll for this long before a send is due (covers the timer's error)


def wake_delay_s(now_s: float, due_s: float, timer_resolution_s: float,
                 poll_window_s: float = POLL_WINDOW_S) -> float | None:
    """How the generator waits for a send due at `due_s`: the seconds to sleep on the loop's timer, or
    None to poll (run again on the loop's next iteration). Sharing CPUs (timer_resolution_s > 0) it
    never polls and sleeps at least timer_resolution_s; whatever falls due meanwhile goes out together
    at the next wake. On CPUs of its own it sleeps until poll_window_s before the due time, then polls."""
    left = due_s - now_s
    if timer_resolution_s > 0:
        return max(timer_resolution_s, left)
    if left > poll_window_s:
        return left - poll_window_s
    return None


def loop_timer_fire_s(now_s: float, delay_s: float, phase: float, clock_s: float = LOOP_CLOCK_S) -> float:
    """When a loop timer armed at `now_s` for `delay_s` fires (>= now_s). libuv reads its clock at
    arming, truncated to the tick, and adds the delay rounded to whole ticks; its poll then sleeps whole
    ticks from when the poll began, which lies `phase` (0..1) of a tick past a tick boundary: the
    loop's other events set it, so a model draws it uniformly. The timer therefore fires from about
    one tick early to one tick late, and a wake that comes early re-arms."""
    if not 0.0 <= phase <= 1.0:
        raise ValueError(f"phase: expected a fraction of a clock tick in [0, 1], got {phase!r}")
    ticks = math.floor(now_s / clock_s) + round(delay_s / clock_s)
    return max(now_s, (ticks + phase) * clock_s)
