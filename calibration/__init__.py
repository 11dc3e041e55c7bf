"""calibration (docs/DESIGN.md §7): make simkit reproduce realkit on this box, and prove it on held-out points.

`calibrate()` is the whole pipeline: probes -> the off-grid design (calibration.offgrid: its open-loop
rates need the probed profile) -> real runs of the grid and the off-grid points, shuffled together ->
the per-operation probes again (each probe keeps its faster pass) -> parameters measured from the runs
-> least-squares fit on the training points -> held-out validation against the USL baseline -> the
refit -> the off-grid validation with the final profile -> profile JSON
(fingerprint, calibrated=True, validation table, failed runs, the off-grid seed, summary and rows in
its notes) and both tables in one CSV (its "set" column: grid | offgrid). Then the prediction bands'
coverage of the held-out points (calibration.coverage: experiments.intervals' rule, leave-one-out), in
the notes and in .coverage.csv.

Only "train" runs reach the fit, only "train" and "cores" runs apply_measured and the refit: the
off-grid runs are predicted, never fitted to.

The measure and simulate functions are parameters (realkit.measure / simkit.simulate by default) so
tests can run the pipeline against fakes.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from calibration.compare import SimBatch
from calibration.coverage import coverage as band_coverage
from calibration.coverage import format_coverage
from calibration.coverage import write_csv as write_coverage_csv
from calibration.fit import (
    FIT_PARAMS,
    FitResult,
    apply_measured,
    loadgen_from_probe,
    probe_floors,
    unmeasured,
)
from calibration.fit import fit as fit_params  # not `fit`: that would hide the calibration.fit module
from calibration.grid import ROLES, GridPoint, build_grid
from calibration.mechanisms import run_mechanisms
from calibration.mechanisms import write_csv as write_mechanisms_csv
from calibration.offgrid import (
    DESIGN,
    FULL_POINTS,
    OFFGRID_ROLE,
    OFFGRID_SEED,
    QUICK_POINTS,
    build_offgrid,
    format_offgrid,
    real_run_s,
    scenario_facts,
    summarize_offgrid,
)
from calibration.probes import REPEATED, run_probes
from calibration.runs import Run, load_runs, run_grid, save_runs
from calibration.validate import USLBaseline, json_safe, summarize, validate, write_csv
from simkit import registry
from simkit.profile import CostProfile, default_profile_path, host_fingerprint
from simkit.scenario import available_cores

# progress(stage, detail, done, total)
StageProgress = Callable[[str, str, int, int], None]
STAGES = ("probes", "real runs", "re-probe", "fit", "validation", "refit", "off-grid", "mechanisms")
# Roles the fit and the parameters measured from runs may see (never the held-out or off-grid ones).
FIT_ROLES = ("train",)
MEASURED_ROLES = ("train", "cores")


@dataclass(frozen=True)
class CalibrationReport:
    profile: CostProfile
    path: Path | None
    csv_path: Path | None
    summary: dict[str, Any]
    runs: list[Run]
    fit: FitResult
    refit: FitResult | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    offgrid_rows: list[dict[str, Any]] = field(default_factory=list)
    offgrid_summary: dict[str, Any] | None = None
    mechanism_rows: list[dict[str, Any]] = field(default_factory=list)
    coverage_rows: list[dict[str, Any]] = field(default_factory=list)  # calibration.coverage, per point x metric
    coverage: dict[str, Any] | None = None  # its summary (per model, per set, overall)
    coverage_path: Path | None = None


def _default_measure():
    from realkit.runner import measure

    return measure


def _default_simulate():
    from simkit import simulate

    return simulate


def raise_nofile(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit toward `needed` (as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    return soft


def check_out(path: str | Path) -> Path:
    """ValueError naming `out` unless the profile and its two CSVs (.csv, .runs.csv) can be written at
    `path`: checked by writing, before a campaign spends its minutes. Creates the directory."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"out: {path} is a directory; expected the profile's file name (.json)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for p in (path, path.with_suffix(".csv"), path.with_suffix(".runs.csv")):
            if p.exists():
                if not p.is_file():
                    raise ValueError(f"out: {p} exists and is not a file")
                with open(p, "a"):
                    pass
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".serverlab-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"out: cannot write {path}: {exc.strerror or exc}") from None
    return path


def pinned_work_rate(budget_s: float = 1.0):
    """Measure realkit's work rate once (a longer budget than a server's own start-up measurement) and
    pin it for the campaign (realkit.work.pinned): every run then asks for the same computation per
    request. A context manager yielding the pinned value."""
    from realkit import work

    return work.pinned(work.measure_calibration(budget_s=budget_s))


def _pinned_again(work_rate: str | None):
    """The campaign's pinned work rate once more (nothing when no real run pinned one)."""
    if not work_rate:
        return contextlib.nullcontext()
    from realkit import work

    return work.pinned(work.Calibration.from_env(work_rate))


def from_servers(profile: CostProfile) -> CostProfile:
    """The costs derived from the probes' real server runs: each architecture's own (the registry's
    CalibrationSpec.from_server, in architecture order: m8's uses m3's parse_s), then the load
    generator's CPU per wake-up, request and connection."""
    for arch in registry.architectures():
        profile = arch.calibration.derive(profile)
    return loadgen_from_probe(profile)


def calibrate(
    out: str | Path | None = None,
    quick: bool = False,
    *,
    measure: Callable | None = None,
    simulate: Callable | None = None,
    progress: StageProgress | None = None,
    models: Sequence[str] | None = None,
    grid: Sequence[GridPoint] | None = None,
    base: CostProfile | None = None,
    probes: bool = True,
    fit_names: Sequence[str] = FIT_PARAMS,
    max_evaluations: int | None = None,
    fit_time_budget_s: float | None = None,
    target_requests: int | None = None,
    workers: int | None = None,
    refit_all: bool | None = None,
    write: bool = True,
    runs_from: str | Path | None = None,
    offgrid: int | None = None,
    offgrid_seed: int = OFFGRID_SEED,
    mechanisms: bool | None = None,
) -> CalibrationReport:
    """Probes + grid + fit + validation; writes the profile (out, or this host's per-user location,
    simkit.profile.default_profile_path(), where resolve_profile finds it) and a CSV
    of the held-out tables beside it (same name, .csv), and every real run (.runs.csv).
    runs_from: reuse the real runs of an earlier calibration (its .runs.csv, off-grid runs included)
    instead of measuring: refits and re-validation without the real-run time. models: the grid's and
    the off-grid design's models (default: every registered one); the grid's models when `grid` is given.
    offgrid: the off-grid design's size (default FULL_POINTS, QUICK_POINTS with quick, 0 when `grid`
    is given; 0: none), drawn with offgrid_seed. mechanisms: run the mechanism table
    (calibration.mechanisms) with the final profile (default: unless `grid` or `runs_from` is given)."""
    t_start = time.monotonic()
    if offgrid is None:
        offgrid = 0 if grid is not None else (QUICK_POINTS if quick else FULL_POINTS)
    if isinstance(offgrid, bool) or not isinstance(offgrid, int) or offgrid < 0:
        raise ValueError(f"offgrid: expected a number of points >= 0, got {offgrid!r}")
    path = Path(out) if out is not None else default_profile_path()
    if write:
        check_out(path)
    real_runs = measure is None and runs_from is None  # realkit's servers will be started
    measure = measure or _default_measure()
    sim_is_default = simulate is None
    simulate = simulate or _default_simulate()
    refit_all = (not quick) if refit_all is None else refit_all
    # Evaluations of the whole training set: a coarse coordinate search (5 + 2 factors per
    # parameter) and a least-squares finish need about 9 x len(fit_names) + 6.
    max_evaluations = max_evaluations or (34 if quick else 9 * len(fit_names) + 6)
    fit_time_budget_s = fit_time_budget_s or (60.0 if quick else 420.0)
    # Simulations use each real run's own window (target_requests None): its p99 may hold a start-up
    # transient (thread spawns, a connect storm past the backlog) and the simulator counts as realkit
    # does, completions inside the window, so it must see the same window to see the same transient.
    if workers is None:
        # A process pool pays for itself only with the real (slow) simulator and a second core.
        workers = 2 if (sim_is_default and available_cores() >= 2) else 1

    def say(stage: str, detail: str, done: int, total: int) -> None:
        if progress:
            progress(stage, detail, done, total)

    def stage_cb(stage: str):
        return lambda detail, done, total: say(stage, detail, done, total)

    work_rate = None
    with contextlib.ExitStack() as pin:
        if real_runs:
            work_rate = pin.enter_context(pinned_work_rate())
        # 1. probes
        probed = base or CostProfile.default()
        first: list = []
        if probes:
            probed, first = run_probes(probed, quick=quick, progress=stage_cb("probes"))
        else:
            probed = replace(probed, fingerprint=host_fingerprint())
        profile = from_servers(probed)

        # 2. real runs: the grid and the off-grid design (its open-loop rates from the probed profile)
        points = list(grid) if grid is not None else build_grid(quick, models)
        design: list[GridPoint] = []
        if offgrid and runs_from is None:
            design_models = models
            if grid is not None:
                design_models = tuple(dict.fromkeys(p.scenario.model.name for p in points))
            design = build_offgrid(offgrid, profile, seed=offgrid_seed, quick=quick, models=design_models)
        every = points + design
        raise_nofile(max(p.scenario.workload.connections + p.scenario.workload.idle_connections for p in every) * 2 + 1024)
        if runs_from is not None:
            runs = load_runs(runs_from)
        else:
            runs = run_grid(every, measure, progress=stage_cb("real runs"))
        if probes and real_runs:
            # A busy spell during the first probes over-prices every per-operation time: probe those
            # again now and keep, probe by probe, the faster pass.
            probed, _again = run_probes(probed, quick=quick, progress=stage_cb("re-probe"), only=REPEATED,
                                        earlier=first)
            profile = from_servers(probed)
    failed = [r.failure_record() for r in runs if not r.ok]
    train = [r for r in runs if r.ok and r.point.role in FIT_ROLES]
    heldout = [r for r in runs if r.ok and r.point.role in ROLES and r.point.role not in FIT_ROLES]
    measured_runs = [r.result for r in runs if r.ok and r.point.role in MEASURED_ROLES]
    off_runs = [r for r in runs if r.point.role == OFFGRID_ROLE]
    if not train:
        raise RuntimeError(f"calibration: every training run failed ({len(failed)} failures; first: "
                           f"{failed[0]['error'] if failed else 'none'})")

    # 3. parameters the real runs measure directly, then the fit on the training points only
    profile = apply_measured(profile, measured_runs)
    fit_names = unmeasured(fit_names, [r.result for r in train])
    floors = probe_floors(profile)
    with SimBatch(simulate, workers) as batch:
        fitted = fit_params([r.result for r in train], profile, names=fit_names, target_requests=target_requests,
                     max_evaluations=max_evaluations, time_budget_s=fit_time_budget_s,
                     progress=stage_cb("fit"), batch=batch, floors=floors)

        # 4. held-out validation with the training-only fit, against USL on the same training points
        say("validation", f"simulating {len(heldout)} held-out points", 0, 1)
        baseline = USLBaseline.fit([r.result for r in train])
        rows = validate(heldout, fitted.profile, batch, baseline, target_requests=target_requests)
        summary = summarize(rows)
        say("validation", "done", 1, 1)

        # 5. the profile others use: refit on every 1- and 2-core grid point (never the interp or
        #    connection points), starting from the training fit. The table above stays the honest
        #    held-out one, made before the refit saw the 2-core points.
        refit: FitResult | None = None
        final = fitted.profile
        if refit_all and fit_names:
            if len(measured_runs) > len(train):
                refit = fit_params(measured_runs, fitted.profile, names=fit_names, target_requests=target_requests,
                            max_evaluations=max(4, max_evaluations // 5), time_budget_s=fit_time_budget_s / 3,
                            progress=stage_cb("refit"), batch=batch, bounds_factor=4.0,
                            search_factors=((1 / 2, 2),), floors=floors)
                final = refit.profile

        # 6. the off-grid set, predicted by the profile written to disk, each over its own real window
        off_ok = [r for r in off_runs if r.ok]
        off_rows: list[dict[str, Any]] = []
        off_summary: dict[str, Any] | None = None
        if off_runs:
            say("off-grid", f"simulating {len(off_ok)} off-grid points", 0, 1)
            off_rows = validate(off_ok, final, batch, None, target_requests=None, extra=scenario_facts)
            off_summary = summarize_offgrid(off_rows)
            say("off-grid", "done", 1, 1)

    # 6b. do the prediction bands hold on the held-out points (leave-one-out, experiments.intervals' rule)?
    cov_rows, cov_summary = band_coverage(rows, heldout, fitted.profile, off_rows, off_ok, final)

    # 7. each mechanism alone: a small real experiment beside the same simulated, with the final profile
    mech_rows: list[dict[str, Any]] = []
    if mechanisms if mechanisms is not None else (grid is None and runs_from is None):
        with _pinned_again(work_rate):  # the servers do the work the campaign's runs did
            mech_rows = run_mechanisms(final, quick, measure=measure, simulate=simulate,
                                       progress=stage_cb("mechanisms"))

    notes = dict(final.notes)
    notes.update({
        "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "work_rate": work_rate,  # realkit.work's pinned unit costs (ns per 4 KiB hashed, per loop step)
        "mode": "quick" if quick else "full",
        "grid": {"points": len(runs) - len(off_runs), "ok": sum(r.ok for r in runs if r.point.role != OFFGRID_ROLE),
                 "failed": sum(not r.ok for r in runs if r.point.role != OFFGRID_ROLE),
                 "roles": {role: sum(1 for r in runs if r.point.role == role)
                           for role in sorted({r.point.role for r in runs} - {OFFGRID_ROLE})}},
        "fit": fitted.summary(),
        "refit": refit.summary() if refit else None,
        "fit_residuals": fitted.per_run,
        "validation_summary": summary,
        "offgrid": {"design": DESIGN if design else "from the runs file" if off_runs else "none",
                    "seed": offgrid_seed if design else None, "points": len(off_runs),
                    "ok": sum(r.ok for r in off_runs), "failed": sum(not r.ok for r in off_runs),
                    "real_run_s": real_run_s([r.point for r in off_runs]), "summary": off_summary},
        "mechanisms": mech_rows,
        "offgrid_validation": off_rows,  # experiments.intervals draws its bands' validation part from these
        "coverage": cov_summary,
        "usl_baseline": {"/".join(map(str, k)): {"lambda": f.lambda_, "sigma": f.sigma, "kappa": f.kappa}
                         for k, f in baseline.fits.items()},
    })
    final = replace(final, calibrated=True, fingerprint=host_fingerprint(), validation=json_safe(rows),
                    failed_runs=failed, notes=json_safe(notes))
    written = csv_path = coverage_path = None
    if write:
        written = final.save(path)
        csv_path = path.with_suffix(".csv")
        write_csv(rows, csv_path, off_rows)
        coverage_path = path.with_suffix(".coverage.csv")
        write_coverage_csv(cov_rows, coverage_path)
        save_runs(runs, path.with_suffix(".runs.csv"))
        if mech_rows:
            write_mechanisms_csv(mech_rows, path.with_suffix(".mechanisms.csv"))
    return CalibrationReport(final, written, csv_path, summary, runs, fitted, refit, rows,
                             time.monotonic() - t_start, off_rows, off_summary, mech_rows, cov_rows, cov_summary,
                             coverage_path)


def format_summary(summary: dict[str, Any]) -> str:
    """The held-out summary as plain text lines (for the CLI and the README)."""
    def pct(v: float) -> str:
        return "  n/a" if v is None or not math.isfinite(v) else f"{100 * v:4.0f}%"

    lines = ["model                 throughput  p50    p99    rss    threads   (median |rel err|, held out)"]
    for m, e in summary["per_model"].items():
        lines.append(f"{m:22s} {pct(e['throughput'])}     {pct(e['p50'])}  {pct(e['p99'])}  "
                     f"{pct(e['rss'])}  {pct(e['threads'])}")
    o = summary["overall"]
    lines.append(f"{'all models':22s} {pct(o['throughput'])}     {pct(o['p50'])}  {pct(o['p99'])}  "
                 f"{pct(o['rss'])}  {pct(o['threads'])}")
    for metric, v in summary["extrapolation_vs_usl"].items():
        lines.append(f"extrapolation {metric}: simulator {pct(v['sim_median_abs_err'])} vs USL "
                     f"{pct(v['usl_median_abs_err'])} over {v['points']} points")
    return "\n".join(lines)


__all__ = ["CalibrationReport", "calibrate", "check_out", "format_coverage", "format_offgrid", "format_summary",
           "raise_nofile"]
