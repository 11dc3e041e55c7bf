"""The questions a team asks, as functions: how many cores for N clients (`size`), how much load a
machine carries (`experiments.planning.capacity`), which model to build (`experiments.planning.recommend`).

`size` runs a sweep itself (experiments.sweep, over a core list, at one client count) unless it is
given one. Its defaults are the default what-if file's (experiments/whatif.toml: production-like
limits, the SLO, the budget, the workload, the adaptive window), so the API and `serverlab whatif`
answer the same question the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from experiments.planning import (
    Sizing,
    calibrated_range,
    capacity,
    check_positive,
    classify,
    model_errors,
    provenance,
)
from experiments.sweep import sweep
from experiments.whatif import load_whatif
from experiments.windows import WindowPolicy
from simkit.profile import CostProfile, resolve_profile
from simkit.scenario import ModelSpec, Scenario, available_cores

DEFAULT_CORES = (1, 2, 4, 8, 16, 32, 64, 128)
_DEFAULT = object()


@dataclass(frozen=True)
class SizeAnswer:
    """What `size` answers.

    clients: the client count asked about. cores: the fewest cores on which some model meets the
    SLO and budget (its p99 band's top under the SLO), None when none does on any core count tried.
    model: the model that needs those cores (ties: the larger margin); "" when none. verdict: that
    point's "p99 31 ms [24, 38] vs SLO 50 ms: 24% margin". source: "sim" or "analytic" (how that
    point was answered). per_model: capacity() of the sweep, one row per model (meets_slo, cores
    = the fewest it needs, throughput_rps, latency_p99_s and band, margin, verdict, source, and for a
    model that never meets, reason and why on the most cores tried). frame: the sweep itself (the
    contract frame, with band columns). text: the answer, then where its figures come from
    (simulated or analytic, inside or past the calibrated range, the model's calibration error).
    warnings: what should make a reader doubt it (analytic or far-extrapolated figures, calibration
    error above planning.ERROR_BARS).
    """

    clients: int
    cores: int | None
    model: str
    verdict: str
    source: str
    per_model: pd.DataFrame
    frame: pd.DataFrame
    text: str
    warnings: tuple[str, ...] = ()


def size(
    clients: int,
    slo_p99_s: float | None = None,
    memory_bytes: float | None = None,
    *,
    models: Sequence[str | int | ModelSpec] | None = None,
    cores: Sequence[int] = DEFAULT_CORES,
    base: Scenario | None = None,
    profile: CostProfile | str | os.PathLike | None = None,
    frame: pd.DataFrame | None = None,
    sizing: Sizing | None = None,
    window: WindowPolicy | None | object = _DEFAULT,
    max_error_rate: float | None = None,
    engine: Any = "local",
    workers: int | None = None,
    simulate: Callable | None = None,
    bands: Any = True,
    progress: bool = False,
) -> SizeAnswer:
    """The fewest cores on which N `clients` meet the SLO (p99 <= slo_p99_s) within memory_bytes.

    Sweeps `models` (default: the what-if file's) x `cores` at `clients` connections around `base`
    (default: the what-if file's workload and production-like limits), or reads `frame` when given
    (a sweep that already holds those points). slo_p99_s, memory_bytes, max_error_rate, sizing and
    window default to the what-if file's ([slo], [budget], [sizing], [sim]); window=None simulates
    the base's fixed window. profile follows the one profile rule (simkit.profile.resolve_profile).
    engine / workers / simulate / bands / progress go to experiments.sweep. Returns a SizeAnswer.
    Bad arguments raise ValueError naming the argument.
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ValueError(f"clients: expected an integer >= 1, got {clients!r}")
    spec = load_whatif()
    slo = spec.slo_p99_s if slo_p99_s is None else slo_p99_s
    budget = spec.memory_bytes if memory_bytes is None else memory_bytes
    check_positive("slo_p99_s", slo)
    check_positive("memory_bytes", budget)
    errors_ok = spec.max_error_rate if max_error_rate is None else max_error_rate
    prof = resolve_profile(profile)
    if frame is None:
        frame = sweep(base or spec.base, list(models or spec.models), list(cores), [clients], profile=prof,
                      engine=engine, simulate=simulate, progress=progress, sizing=sizing or spec.sizing,
                      workers=workers, window=spec.window if window is _DEFAULT else window, bands=bands,
                      description=f"sizing for {clients:,} clients")
    else:
        frame = frame[frame["connections"] == clients]
        if frame.empty:
            raise ValueError(f"frame: no rows with connections == {clients}")
    per_model = capacity(frame, slo, budget, max_error_rate=errors_ok)
    meeting = per_model[per_model["meets_slo"]]
    slo_txt = f"p99 <= {slo * 1e3:.3g} ms within {budget / 2**30:.3g} GiB"
    if meeting.empty:
        tried = ", ".join(str(c) for c in sorted(frame["cores"].unique()))
        why = "; ".join(f"{r.model}: {r.reason} ({r.why})" for r in per_model.itertuples() if r.reason)
        return SizeAnswer(clients, None, "", "", "", per_model, frame,
                          f"No model meets {slo_txt} for {clients:,} clients on {tried} cores. {why}")
    best = meeting.sort_values(["cores", "margin"], ascending=[True, False]).iloc[0]
    point = frame[(frame["model"] == best["model"]) & (frame["cores"] == best["cores"])].iloc[0]
    assert classify(point, slo, budget, errors_ok) == ""  # capacity's answer is a meeting row
    rows = [r for r in prof.validation if isinstance(r, dict)]
    calibrated = calibrated_range(rows, available_cores(), clients) if rows else None
    figures, doubts = provenance(best, calibrated, model_errors(rows) if rows else None)
    text = (f"{int(best['cores'])} cores: {best['model']} serves {clients:,} clients with {best['verdict']} "
            f"({best['throughput_rps']:,.0f} req/s). {figures}")
    return SizeAnswer(clients, int(best["cores"]), str(best["model"]), str(best["verdict"]), str(best["source"]),
                      per_model, frame, text, tuple(doubts))

