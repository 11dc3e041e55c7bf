"""Queueing formulas: pure functions, no SimPy, nothing about servers.

- Single stations: `mm1` and `mmc` (Erlang C) for open-loop Poisson arrivals with exponential
  service; `erlang_c` on its own.
- Closed networks: `mva`, the exact solution of a closed product-form network (N clients with a
  think time, single- and multi-server queueing stations, delay stations), computed by the
  convolution algorithm in log space because the multi-server MVA recursion is numerically unstable
  past saturation. `mva_recursive` (Seidmann's multi-server approximation, stable, allows
  overlapping stations) and `closed_large_population` (a fixed point for very many clients) are the
  fast approximations simkit.analytic uses.
- Open networks: `open_network`, a Jackson network of M/M/c stations.
- The Universal Scalability Law (`usl`, `fit_usl`): calibration's baseline curve.

simkit.analytic translates an architecture into a network of these stations.

Every function validates its inputs and raises ValueError naming the offending argument; an open
queue at or past saturation names the arrival rate, since that is the knob the caller turns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "QueueMetrics",
    "Station",
    "MVAResult",
    "USLFit",
    "LARGE_POPULATION",
    "erlang_c",
    "mm1",
    "mmc",
    "mva",
    "mva_multiserver",
    "mva_recursive",
    "closed_large_population",
    "open_network",
    "usl",
    "fit_usl",
]


# -- validation helpers --------------------------------------------------------------------------
def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def _count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value!r}")
    return int(value)


# -- open stations ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueMetrics:
    """Steady state of one open station. Times in seconds, rates in requests per second."""

    utilisation: float  # per server, 0..1
    wait_probability: float  # P(an arrival queues)
    wait_mean_s: float  # time in queue, before service
    response_mean_s: float  # wait + service
    number_in_system_mean: float  # Little: arrival rate x response
    number_in_queue_mean: float

    def response_quantile_s(self, q: float, service_rate_rps: float, servers: int) -> float:
        """Quantile of the response time of an M/M/c station (exact, by root finding on the CDF)."""
        return _mmc_response_quantile(q, self, service_rate_rps, servers)


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load a = lambda/mu (Erlang C).

    Computed through the Erlang B recursion, which stays stable for thousands of servers where the
    textbook factorial form overflows.
    """
    c = _count("servers", servers)
    a = _positive("offered_load", offered_load, allow_zero=True)
    if a >= c:
        raise ValueError(f"offered_load: {a:g} >= servers {c}: the queue is unstable (utilisation >= 1)")
    if a == 0:
        return 0.0
    b = 1.0  # Erlang B with 0 servers
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1.0 - rho + rho * b)


def mmc(arrival_rate_rps: float, service_rate_rps: float, servers: int) -> QueueMetrics:
    """M/M/c: Poisson arrivals, exponential service of rate mu per server, c servers, FCFS."""
    lam = _positive("arrival_rate_rps", arrival_rate_rps, allow_zero=True)
    mu = _positive("service_rate_rps", service_rate_rps)
    c = _count("servers", servers)
    a = lam / mu
    if a >= c:
        raise ValueError(
            f"arrival_rate_rps: {lam:g} rps saturates {c} server(s) of {mu:g} rps each (utilisation {a / c:.3f} >= 1)"
        )
    pw = erlang_c(c, a)
    wq = pw / (c * mu - lam) if lam > 0 else 0.0
    response = wq + 1.0 / mu
    return QueueMetrics(
        utilisation=a / c,
        wait_probability=pw,
        wait_mean_s=wq,
        response_mean_s=response,
        number_in_system_mean=lam * response,
        number_in_queue_mean=lam * wq,
    )


def mm1(arrival_rate_rps: float, service_rate_rps: float) -> QueueMetrics:
    """M/M/1: mean response 1 / (mu - lambda)."""
    return mmc(arrival_rate_rps, service_rate_rps, 1)


def _mmc_response_quantile(q: float, m: QueueMetrics, mu: float, c: int) -> float:
    from scipy.optimize import brentq

    q = float(q)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q: must be in (0, 1), got {q!r}")
    pw = m.wait_probability
    theta = c * mu - m.utilisation * c * mu  # rate of the conditional wait: c mu - lambda

    def survival(t: float) -> float:
        # R = W + S, W = 0 w.p. 1 - pw else Exp(theta), S ~ Exp(mu) independent.
        no_wait = (1.0 - pw) * math.exp(-mu * t)
        if pw == 0.0:
            return no_wait
        if abs(theta - mu) < 1e-12 * mu:
            waited = pw * math.exp(-mu * t) * (1.0 + mu * t)
        else:
            waited = pw * (theta * math.exp(-mu * t) - mu * math.exp(-theta * t)) / (theta - mu)
        return no_wait + waited

    hi = 1.0 / mu
    while survival(hi) > 1.0 - q:
        hi *= 2.0
    return brentq(lambda t: survival(t) - (1.0 - q), 0.0, hi, xtol=1e-15, rtol=1e-10)


# -- closed networks: MVA ----------------------------------------------------------------------
@dataclass(frozen=True)
class Station:
    """A station of a closed or open network: a service demand per request and its servers.

    servers=None is a delay (infinite-server) station: no queueing, the demand is pure latency.
    overlap_s is the part of the demand that another station already charges to the request's
    latency: time in a reactor loop is also time on a core, so the "cores" station adds only its
    queueing to a request's response, not its service a second time. Exact product-form networks
    leave it at 0; the architecture networks of `model_stations` use it (a coarse heuristic).
    """

    name: str
    demand_s: float
    servers: int | None = 1
    overlap_s: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: expected a non-empty string, got {self.name!r}")
        object.__setattr__(self, "demand_s", _positive("demand_s", self.demand_s, allow_zero=True))
        if self.servers is not None:
            object.__setattr__(self, "servers", _count("servers", self.servers))
        overlap = _positive("overlap_s", self.overlap_s, allow_zero=True)
        if overlap > self.demand_s * (1 + 1e-12):
            raise ValueError(f"overlap_s: {overlap:g} exceeds demand_s {self.demand_s:g}")
        object.__setattr__(self, "overlap_s", min(overlap, self.demand_s))


@dataclass(frozen=True)
class MVAResult:
    clients: int
    throughput_rps: float
    response_s: float  # mean time in the stations (excludes the think time and any overlap_s)
    queue_lengths: dict[str, float]  # mean number at each station
    residence_s: dict[str, float]  # mean time at each station per request
    utilisation: dict[str, float]  # busy servers / servers (delay stations: mean number busy)

    @property
    def number_in_system(self) -> float:
        return sum(self.queue_lengths.values())


def mva(clients: int, think_s: float, stations: Sequence[Station]) -> MVAResult:
    """Exact analysis of a single-class closed product-form network (what MVA computes), stably.

    `clients` customers cycle between a think (delay) of `think_s` and the stations: single-server,
    c-server FCFS (a load-dependent rate min(j, c) / D) or delay. Solved by the convolution algorithm
    in log space rather than by the MVA recursion, whose multi-server form is numerically unstable
    past saturation (see mva_recursive): the normalising constant G(n) of the think + delay stations
    is closed form, each queueing station is convolved in O(clients x servers) using the geometric
    tail of a c-server station's weights, and X = G(N-1) / G(N). Mean queue lengths come from each
    station's marginal distribution, F_k(j) G_-k(N-j) / G(N). Stations may not carry overlap_s.
    """
    n_total, z, stations = _check_network(clients, think_s, stations)
    bad = [s.name for s in stations if s.overlap_s > 0]
    if bad:
        raise ValueError(f"overlap_s: station {bad[0]!r} overlaps another; exact MVA needs disjoint stations "
                         "(mva_recursive handles overlap heuristically)")
    queueing = [s for s in stations if s.servers is not None and s.demand_s > 0]
    delay_s = z + sum(s.demand_s for s in stations if s.servers is None)
    n = np.arange(n_total + 1, dtype=float)
    from scipy.special import gammaln

    if delay_s > 0:
        log_delay = n * math.log(delay_s) - gammaln(n + 1)
    else:
        log_delay = np.full(n_total + 1, -np.inf)
        log_delay[0] = 0.0

    def convolve_all(members: list[Station]) -> np.ndarray:
        log_g = log_delay
        for st in members:
            log_g = _log_convolve(log_g, st.demand_s, min(st.servers, n_total))
        return log_g

    log_g = convolve_all(queueing)
    x = math.exp(log_g[n_total - 1] - log_g[n_total])
    queue: dict[str, float] = {}
    for st in stations:
        if st.servers is None or st.demand_s == 0:
            queue[st.name] = x * st.demand_s
            continue
        others = convolve_all([o for o in queueing if o is not st])
        log_f = _log_weights(st.demand_s, min(st.servers, n_total), n_total)
        log_p = log_f + others[::-1] - log_g[n_total]  # p(j | N), j = 0..N
        queue[st.name] = float(np.sum(n * np.exp(log_p)))
    util = {s.name: x * s.demand_s / (min(s.servers, n_total) if s.servers is not None else 1) for s in stations}
    return MVAResult(
        clients=n_total,
        throughput_rps=x,
        response_s=n_total / x - z,
        queue_lengths=queue,
        residence_s={name: q / x for name, q in queue.items()},
        utilisation=util,
    )


def _check_network(clients: int, think_s: float, stations: Sequence[Station]) -> tuple[int, float, list[Station]]:
    n_total = _count("clients", clients)
    z = _positive("think_s", think_s, allow_zero=True)
    stations = list(stations)
    if not stations:
        raise ValueError("stations: need at least one station")
    if not all(isinstance(s, Station) for s in stations):
        raise ValueError("stations: expected Station objects")
    names = [s.name for s in stations]
    if len(set(names)) != len(names):
        raise ValueError(f"stations: duplicate station names {names}")
    if z == 0 and all(s.demand_s == 0 for s in stations):
        raise ValueError("stations: every demand and the think time are 0; throughput would be infinite")
    return n_total, z, stations


def _log_weights(demand_s: float, servers: int, n_total: int) -> np.ndarray:
    """log F(j), j = 0..N, of a c-server station: D^j / j! up to c, then F(c) (D / c)^(j - c)."""
    from scipy.special import gammaln

    j = np.arange(n_total + 1, dtype=float)
    head = j * math.log(demand_s) - gammaln(j + 1)
    if servers >= n_total:
        return head
    tail = head[servers] + (j - servers) * math.log(demand_s / servers)
    return np.where(j <= servers, head, tail)


def _log_convolve(log_g: np.ndarray, demand_s: float, servers: int) -> np.ndarray:
    """log of G'(n) = sum_j F(j) G(n - j) for a c-server station, in O(N c).

    j < c terms directly; the geometric tail T(n) = sum_{j>=c} F(c) r^(j-c) G(n-j), r = D / c, is
    r^n F(c) r^-c times a running log-sum-exp of G(m) r^-m, m <= n - c.
    """
    from scipy.special import logsumexp

    size = log_g.size
    c = min(servers, size - 1)
    log_f = _log_weights(demand_s, servers, size - 1)
    head_terms = np.full((size, c), -np.inf)
    for j in range(c):
        head_terms[j:, j] = log_f[j] + log_g[: size - j]
    out = logsumexp(head_terms, axis=1) if c > 0 else np.full(size, -np.inf)
    if c < size:
        log_r = math.log(demand_s / servers)
        m = np.arange(size, dtype=float)
        running = np.logaddexp.accumulate(log_g - m * log_r)  # index i: m <= i
        tail = np.full(size, -np.inf)
        tail[c:] = log_f[c] - c * log_r + m[c:] * log_r + running[: size - c]
        out = np.logaddexp(out, tail)
    return out


def mva_recursive(clients: int, think_s: float, stations: Sequence[Station]) -> MVAResult:
    """Approximate MVA that allows overlapping stations: what `analytic` uses for closed loops.

    A c-server station becomes Seidmann's pair - a single server of demand D / c plus a delay of
    D (c - 1) / c - and the network is solved by the plain single-server MVA recursion. That
    recursion is numerically stable (the exact multi-server recursion on p(j | n) is not: it loses
    tens of percent past saturation), and Seidmann's error is small where the exact answer is
    known (tests/simkit/test_analytic.py). A station's overlap_s is left out of the cycle time (see
    Station). Past saturation the remaining clients only lengthen the bottleneck queue, so the tail
    of the recursion is finished in closed form. Use `mva` for exact product-form answers.
    """
    n_total, z, stations = _check_network(clients, think_s, stations)
    # (owner index, demand, is_queue, overlap) after splitting multi-server stations.
    parts: list[tuple[int, float, bool, float]] = []
    for i, st in enumerate(stations):
        if st.servers is None:
            parts.append((i, st.demand_s, False, st.overlap_s))
        elif st.servers == 1:
            parts.append((i, st.demand_s, True, st.overlap_s))
        else:
            c = st.servers
            parts.append((i, st.demand_s / c, True, st.overlap_s / c))
            parts.append((i, st.demand_s * (c - 1) / c, False, st.overlap_s * (c - 1) / c))
    demand = [d for _, d, _, _ in parts]
    is_queue = [q for _, _, q, _ in parts]
    overlap = sum(o for _, _, _, o in parts)
    k = len(parts)
    queue = [0.0] * k
    resid = [0.0] * k
    x = 0.0
    for n in range(1, n_total + 1):
        for j in range(k):
            resid[j] = demand[j] * (1.0 + queue[j]) if is_queue[j] else demand[j]
        x_prev, x = x, n / (z + sum(resid) - overlap)
        for j in range(k):
            queue[j] = x * resid[j]
        # X is non-decreasing in n here; once it stops moving the bottleneck is saturated and each
        # further client only adds 1 / X to its residence.
        if n < n_total and n > 64 and x - x_prev <= 1e-13 * x:
            b = max((j for j in range(k) if is_queue[j]), key=lambda j: demand[j], default=None)
            if b is not None:
                extra = n_total - n
                queue[b] += extra
                resid[b] += extra / x
                break
    queue_by = {st.name: 0.0 for st in stations}
    resid_by = {st.name: 0.0 for st in stations}
    for j, (i, _, _, _) in enumerate(parts):
        queue_by[stations[i].name] += queue[j]
        resid_by[stations[i].name] += resid[j]
    util = {st.name: x * st.demand_s / (st.servers if st.servers is not None else 1) for st in stations}
    return MVAResult(
        clients=n_total,
        throughput_rps=x,
        response_s=sum(resid) - overlap,
        queue_lengths=queue_by,
        residence_s=resid_by,
        utilisation=util,
    )


def mva_multiserver(clients: int, think_s: float, demand_s: float, servers: int) -> MVAResult:
    """N clients with think time Z and one station of c servers (the machine-repairman model)."""
    return mva(clients, think_s, [Station("station", demand_s, servers)])


def open_network(arrival_rate_rps: float, stations: Sequence[Station]) -> tuple[float, dict[str, QueueMetrics]]:
    """Jackson approximation: each station an independent M/M/c at the same arrival rate.

    Returns (mean response in seconds, per-station metrics). Raises ValueError naming
    arrival_rate_rps when any station saturates.
    """
    lam = _positive("arrival_rate_rps", arrival_rate_rps)
    per: dict[str, QueueMetrics] = {}
    total = 0.0
    for s in stations:
        if s.demand_s == 0:
            continue
        if s.servers is None:
            total += s.demand_s - s.overlap_s
            continue
        try:
            metrics = mmc(lam, 1.0 / s.demand_s, s.servers)
        except ValueError as exc:
            raise ValueError(f"arrival_rate_rps: station {s.name!r}: {exc}") from None
        per[s.name] = metrics
        total += metrics.response_mean_s - s.overlap_s
    return total, per


# Above this many clients analytic() uses the large-population fixed point instead of the MVA
# recursion, whose cost grows with the client count (~0.5 us per client and station).
LARGE_POPULATION = 50_000


def closed_large_population(clients: int, think_s: float, stations: Sequence[Station]) -> float:
    """Throughput of a closed network with many clients, as the fixed point X = N / (Z + R_open(X)).

    R_open(X) is the Jackson open-network response (each station an M/M/c at rate X, overlap_s left
    out as in mva_recursive). With many clients per server the closed network behaves like the open
    one at the rate it carries; below the knee R_open is near the no-wait latency, past it X tends to
    the bottleneck's capacity. Solved by brentq in microseconds, where MVA costs O(N) steps.
    """
    from scipy.optimize import brentq

    n_total, z, stations = _check_network(clients, think_s, stations)
    queueing = [s for s in stations if s.servers is not None and s.demand_s > 0]
    capacity = min((s.servers / s.demand_s for s in queueing), default=math.inf)
    delay = sum(s.demand_s - s.overlap_s for s in stations if s.servers is None)

    def response(x: float) -> float:
        total = delay
        for s in queueing:
            total += mmc(x, 1.0 / s.demand_s, s.servers).response_mean_s - s.overlap_s
        return total

    no_wait = delay + sum(s.demand_s - s.overlap_s for s in queueing)
    upper = min(n_total / (z + no_wait) if z + no_wait > 0 else math.inf, capacity * (1 - 1e-12))
    if not queueing:
        return upper

    def excess(x: float) -> float:
        return x * (z + response(x)) - n_total

    if excess(upper) <= 0:  # the no-wait bound binds before any queue forms
        return upper
    return brentq(excess, upper * 1e-12, upper, xtol=1e-12 * upper, rtol=1e-12)


# -- Universal Scalability Law -------------------------------------------------------------------
def usl(n, lambda_: float, sigma: float, kappa: float):
    """Gunther's USL: X(N) = lambda N / (1 + sigma (N - 1) + kappa N (N - 1)).

    lambda_ is the throughput of one unit of concurrency, sigma the contention (serial fraction),
    kappa the coherency (crosstalk) penalty. Accepts a scalar or an array of N.
    """
    n_arr = np.asarray(n, dtype=float)
    return lambda_ * n_arr / (1.0 + sigma * (n_arr - 1.0) + kappa * n_arr * (n_arr - 1.0))


@dataclass(frozen=True)
class USLFit:
    lambda_: float
    sigma: float
    kappa: float
    lambda_sd: float
    sigma_sd: float
    kappa_sd: float
    rmse_rel: float  # root mean square relative residual on the fitted points

    def predict(self, n):
        return usl(n, self.lambda_, self.sigma, self.kappa)

    @property
    def peak_n(self) -> float:
        """Concurrency of peak throughput, sqrt((1 - sigma) / kappa); inf when kappa == 0."""
        return math.sqrt(max(1.0 - self.sigma, 0.0) / self.kappa) if self.kappa > 0 else math.inf


def fit_usl(n, x) -> USLFit:
    """Least-squares USL fit, in relative error, with 1-sd uncertainties from the covariance.

    n: concurrency levels (>= 1), x: measured throughputs (> 0). Needs three distinct n. Relative
    residuals, so a high-throughput point does not drown the shape of the curve.
    """
    from scipy.optimize import curve_fit

    n_arr = np.asarray(n, dtype=float)
    x_arr = np.asarray(x, dtype=float)
    if n_arr.ndim != 1 or x_arr.ndim != 1 or n_arr.shape != x_arr.shape:
        raise ValueError(f"x: expected a 1-D sequence as long as n ({n_arr.shape} vs {x_arr.shape})")
    if not np.all(np.isfinite(n_arr)) or np.any(n_arr < 1):
        raise ValueError("n: every concurrency level must be finite and >= 1")
    if not np.all(np.isfinite(x_arr)) or np.any(x_arr <= 0):
        raise ValueError("x: every throughput must be finite and > 0")
    if len(np.unique(n_arr)) < 3:
        raise ValueError("n: need at least three distinct concurrency levels to fit three parameters")

    # Start lambda_ from the lowest-concurrency point's throughput per unit of concurrency.
    i0 = int(np.argmin(n_arr))
    p0 = (x_arr[i0] / n_arr[i0], 0.01, 1e-4)
    params, cov = curve_fit(
        usl,
        n_arr,
        x_arr,
        p0=p0,
        sigma=x_arr,  # relative residuals
        absolute_sigma=False,
        bounds=([0.0, 0.0, 0.0], [np.inf, 1.0, np.inf]),
        maxfev=20_000,
    )
    sds = np.sqrt(np.clip(np.diag(cov), 0.0, np.inf)) if np.all(np.isfinite(cov)) else np.full(3, np.inf)
    resid = (usl(n_arr, *params) - x_arr) / x_arr
    return USLFit(
        lambda_=float(params[0]),
        sigma=float(params[1]),
        kappa=float(params[2]),
        lambda_sd=float(sds[0]),
        sigma_sd=float(sds[1]),
        kappa_sd=float(sds[2]),
        rmse_rel=float(np.sqrt(np.mean(resid**2))),
    )


# -- the seven architectures as station networks ---------------------------------------------------
