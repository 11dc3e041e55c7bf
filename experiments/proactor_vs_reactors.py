"""Would a completion-based proactor (m8, io_uring) beat the reactors on this box, where, and by how
much? Each case is measured for real (realkit) and simulated with this host's calibrated profile, the
way calibration compares them (the load generator where the runner puts it), side by side.

Cases: zero work and 100 us of GIL-free work; 50 and 1,000 keep-alive connections; one request per
connection; 1 core, and 2 cores with each model's loops or processes at 2. The models: m3 (one epoll
loop), m5 (an acceptor and epoll loops), m6 (pre-forked reactor processes, SO_REUSEPORT) and m8.

Run: python -m experiments.proactor_vs_reactors [--duration 2] [--cores 1,2]
Takes about 4 minutes with the defaults (48 real runs of about 3 s).
"""

from __future__ import annotations

import argparse
import warnings

import pandas as pd

from calibration.compare import SimBatch
from realkit.runner import measure
from simkit import simulate
from simkit.profile import resolve_profile
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

MODELS = {"m3": {}, "m5": {"threads": 2}, "m6": {"processes": 2, "dispatch": "reuseport"}, "m8": {"threads": 2}}
CASES = {
    "50 conns, no work": dict(connections=50),
    "50 conns, cpu_us 100": dict(connections=50, cpu_us=100),
    "1,000 conns, no work": dict(connections=1000),
    "50 conns, 1 request each": dict(connections=50, requests_per_conn=1),
}


def scenarios(cores: list[int], duration_s: float) -> list[Scenario]:
    out = []
    for n in cores:
        for work in CASES.values():
            for short, knobs in MODELS.items():
                sized = {k: (v if n > 1 else 1) if k in ("threads", "processes") else v for k, v in knobs.items()}
                out.append(Scenario(model=ModelSpec.for_model(short, **sized), hardware=Hardware(cores=n),
                                    workload=Workload(duration_s=duration_s, warmup_s=0.5, **work)))
    return out


def compare(cases: list[Scenario]) -> pd.DataFrame:
    profile = resolve_profile()
    print(f"profile: {profile.describe()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 2 cores on a 2-core box: the generator shares them
        reals = [measure(s) for s in cases]
    with SimBatch(simulate) as batch:
        sims = batch.run([r.scenario for r in reals], [profile] * len(reals))
    rows = []
    for scenario, real, sim in zip(cases, reals, sims, strict=True):
        row = {"cores": scenario.hardware.cores, "case": _case(scenario), "model": scenario.model.name.split("_")[0],
               "real_rps": real.throughput_rps, "real_p99_ms": real.latency_p99_s * 1e3}
        if isinstance(sim, str):
            row.update(sim_rps=float("nan"), sim_p99_ms=float("nan"))
        else:
            row.update(sim_rps=sim.throughput_rps, sim_p99_ms=sim.latency_p99_s * 1e3)
        rows.append(row)
    return pd.DataFrame(rows)


def _case(s: Scenario) -> str:
    w = s.workload
    return next(name for name, work in CASES.items()
                if all(getattr(w, k) == v for k, v in work.items()) and (w.cpu_us > 0) == ("cpu_us" in work)
                and (w.requests_per_conn is not None) == ("requests_per_conn" in work))


def versus_m8(frame: pd.DataFrame) -> pd.DataFrame:
    """m8's throughput over each other model's, real and simulated, per case."""
    key = ["cores", "case"]
    m8 = frame[frame["model"] == "m8"].set_index(key)
    out = []
    for model, rows in frame[frame["model"] != "m8"].groupby("model"):
        r = rows.set_index(key)
        out.append(pd.DataFrame({"vs": model, "real": m8["real_rps"] / r["real_rps"],
                                 "sim": m8["sim_rps"] / r["sim_rps"]}))
    return pd.concat(out).reset_index().pivot(index=key, columns="vs", values=["real", "sim"]).round(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    ap.add_argument("--cores", default="1,2", help="core counts, comma-separated")
    args = ap.parse_args()
    frame = compare(scenarios([int(c) for c in args.cores.split(",")], args.duration))
    pd.set_option("display.width", 160)
    print(frame.round(2).to_string(index=False))
    print("\nm8 throughput / the other model's (real and simulated):")
    print(versus_m8(frame).to_string())


if __name__ == "__main__":
    main()
