"""Real runs of the calibration grid (docs/DESIGN.md §7.2): measured with one retry, failures kept,
saved to and loaded from CSV (a refit needs no new measurements)."""

from __future__ import annotations

import random
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from calibration.grid import CALIBRATION_CONNECT_RATE_CPS, GridPoint
from simkit.result import Result
from simkit.scenario import Scenario

# A Result.failure that means the run itself broke (not a limit the model legitimately hit).
# (realkit.runner joins several with commas; "fd_limit" and the like are outcomes, not breakage.)
RUN_FAILURES = ("server_died", "loadgen", "http_errors")

MeasureFn = Callable[[Scenario], Result]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Run:
    point: GridPoint
    result: Result | None
    error: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.error

    def failure_record(self) -> dict[str, Any]:
        return {"label": self.point.label(), "role": self.point.role, "mix": self.point.mix,
                "scenario": self.point.scenario.to_dict(), "error": self.error, "attempts": self.attempts}


def run_failed(result: Result) -> str:
    """Why a real run is unusable ("" when it is fine)."""
    broken = [f for f in result.failure.split(",") if f.strip() in RUN_FAILURES]
    if broken:
        return f"run failed: {result.failure}"
    if result.completed <= 0 or result.throughput_rps <= 0:
        return f"no request completed (errors: {result.errors}, failure: {result.failure or 'none'})"
    return ""


def measure_with_retry(point: GridPoint, measure: MeasureFn, retries: int = 1) -> Run:
    """A failed real run (exception, broken server or load generator, nothing completed) is tried
    once more; if it fails again it is returned with its error, to be recorded, never dropped."""
    error = ""
    for attempt in range(1, retries + 2):
        try:
            with warnings.catch_warnings():
                # Expected on the 2-core points of a 2-core box, and accounted for (loadgen_cpu_util).
                warnings.filterwarnings("ignore", message="server and load generator share CPUs")
                result = measure(point.scenario)
        except Exception as exc:  # noqa: BLE001 - any failure of the real run is an observation
            error = f"{type(exc).__name__}: {exc}".strip()
            tb = traceback.format_exc(limit=3)
            error = error if len(error) > 8 else f"{error} {tb[-300:]}"
            continue
        why = run_failed(result)
        if not why:
            return Run(point, result, "", attempt)
        error = why
    return Run(point, None, error, retries + 1)


def run_grid(points: Sequence[GridPoint], measure: MeasureFn, *, progress: Progress | None = None,
             retries: int = 1, seed: int = 1) -> list[Run]:
    """Measure every point; the Runs come back in grid order.

    The points run in a fixed shuffled order, not model after model: a shared box's speed drifts over
    minutes, and in grid order a slow spell would land on one model's training and held-out points
    together. Shuffled, it spreads thin over every model."""
    order = list(range(len(points)))
    random.Random(seed).shuffle(order)
    runs: list[Run | None] = [None] * len(points)
    for done, i in enumerate(order):
        if progress:
            progress(points[i].label(), done, len(points))
        runs[i] = measure_with_retry(points[i], measure, retries)
    if progress:
        progress("real runs done", len(points), len(points))
    return runs


def save_runs(runs: Sequence[Run], path) -> None:
    """Every real run as a contract frame row plus role, mix, error and attempts (failed runs too)."""
    import pandas as pd

    rows = []
    for run in runs:
        row = (run.result.to_row() if run.result is not None
               else {**run.point.scenario.flat(), "source": "real"})
        row.update(role=run.point.role, mix=run.point.mix, error=run.error, attempts=run.attempts)
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


def load_runs(path) -> list[Run]:
    import pandas as pd

    out = []
    for row in pd.read_csv(path, keep_default_na=True).to_dict(orient="records"):
        role, mix = row.pop("role"), row.pop("mix")
        error = row.pop("error")
        error = error if isinstance(error, str) else ""
        attempts = int(row.pop("attempts"))
        # Runs saved before Workload.connect_rate_cps existed connected as fast as they could (its
        # default now is a ramp): read them as they ran.
        row.setdefault("connect_rate_cps", CALIBRATION_CONNECT_RATE_CPS)
        scenario = Scenario.from_flat(row)
        result = None if error else Result.from_row(row)
        out.append(Run(GridPoint(scenario, role, mix), result, error, attempts))
    return out
