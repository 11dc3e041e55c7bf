"""The shared contract: one Result row per (scenario, source), real or simulated alike.

A list of Results becomes a pandas DataFrame whose columns are METRIC_COLUMNS, then the scenario's
flattened fields (Scenario.flat()), then `source`. Calibration and reports only ever see that frame.

Decisions beyond docs/DESIGN.md §5:
- `failure` names why a run could not hold its load ("" when it did): "threads_max", "memory",
  "fd_limit", "backlog", "server_died", "loadgen", ... Capacity planning needs the reason, not
  only the symptom.
- `processes_peak` is docs/DESIGN.md §5's `processes` metric, renamed: the flattened ModelSpec already has a
  `processes` column (the m6 knob), and a frame cannot hold two columns of one name.
- `loadgen_cpu_util` is the load generator's own CPU use (0..cores) in a real run; on a small box
  it competes with the server and calibration must know. Simulated runs report the modelled client
  CPU, or 0 when the client is not modelled on the server's cores.
- `in_flight` counts requests issued but neither completed nor failed when the run ended, so
  issued = completed + errors + in_flight can be checked (conservation).
- `profile` names the cost profile a simulated or analytic Result came from (CostProfile.label:
  host, calibration date, short id), so a number can be traced to the costs behind it. A real
  Result has "": it was measured, not priced. Frames written before the field load with "".
- `work_cpu_scale` / `work_gil_scale`: how long the request work really took against what it asked
  for (cpu_us, gil_us), as CPU time. A real run measures it (realkit.work.WorkLedger: this box's speed
  for interpreted code drifts by up to ~2x while a campaign runs); a simulated one reports the
  profile's value it used. NaN where no request asked for that kind (or the server is not realkit's).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from simkit.scenario import Scenario, scenario_columns

SOURCES: tuple[str, ...] = ("real", "sim", "analytic")

_FLOAT_METRICS = (
    "throughput_rps",
    "latency_mean_s",
    "latency_p50_s",
    "latency_p90_s",
    "latency_p99_s",
    "latency_p999_s",
    "cpu_util",
    "ctx_switches_per_s",
    "loadgen_cpu_util",
    "work_cpu_scale",
    "work_gil_scale",
)
_INT_METRICS = (
    "completed",
    "errors_refused",
    "errors_timeout",
    "errors_reset",
    "in_flight",
    "threads_peak",
    "processes_peak",
    "rss_peak_bytes",
    "fds_peak",
)


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    source: str
    throughput_rps: float = 0.0
    latency_mean_s: float = math.nan
    latency_p50_s: float = math.nan
    latency_p90_s: float = math.nan
    latency_p99_s: float = math.nan
    latency_p999_s: float = math.nan
    completed: int = 0
    errors_refused: int = 0
    errors_timeout: int = 0
    errors_reset: int = 0
    in_flight: int = 0
    cpu_util: float = 0.0
    ctx_switches_per_s: float = 0.0
    threads_peak: int = 0
    processes_peak: int = 0
    rss_peak_bytes: int = 0
    fds_peak: int = 0
    loadgen_cpu_util: float = 0.0
    work_cpu_scale: float = math.nan
    work_gil_scale: float = math.nan
    failure: str = ""
    profile: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.scenario, Scenario):
            raise ValueError(f"scenario: expected a Scenario, got {type(self.scenario).__name__}")
        if self.source not in SOURCES:
            raise ValueError(f"source: must be one of {', '.join(SOURCES)}, got {self.source!r}")
        for name in _FLOAT_METRICS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: expected a number, got {value!r}")
            if value < 0:  # NaN compares False: an unmeasured latency stays NaN
                raise ValueError(f"{name}: must be >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in _INT_METRICS:
            value = getattr(self, name)
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
            object.__setattr__(self, name, value)
        if self.cpu_util > self.scenario.hardware.cores * 1.05 + 0.05:
            raise ValueError(f"cpu_util: {self.cpu_util:.2f} exceeds the scenario's {self.scenario.hardware.cores} cores")
        for name in ("failure", "profile"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}: expected a string, got {getattr(self, name)!r}")

    @property
    def errors(self) -> int:
        return self.errors_refused + self.errors_timeout + self.errors_reset

    def to_row(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in metric_columns()}
        row.update(self.scenario.flat())
        row["source"] = self.source
        return row

    def to_dict(self) -> dict[str, Any]:
        return self.to_row()

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Result:
        metrics = {name: row[name] for name in metric_columns() if name in row}
        for name in ("failure", "profile"):
            if name in metrics and not isinstance(metrics[name], str):
                metrics[name] = ""  # a NaN from an empty CSV cell
        return cls(scenario=Scenario.from_flat(row), source=row["source"], **metrics)

    from_dict = from_row


def metric_columns() -> list[str]:
    return [f.name for f in dataclasses.fields(Result) if f.name not in ("scenario", "source")]


def columns() -> list[str]:
    """The exact DataFrame columns, in order."""
    return metric_columns() + scenario_columns() + ["source"]


def to_frame(results: list[Result]):
    """A list of Results -> pandas DataFrame with exactly columns()."""
    import pandas as pd

    return pd.DataFrame([r.to_row() for r in results], columns=columns())


def from_frame(frame) -> list[Result]:
    return [Result.from_row(row) for row in frame.to_dict(orient="records")]
