"""How many cores for 50k keep-alive clients at p99 <= 50 ms?

Each of 50,000 keep-alive clients sends a request, reads the answer, thinks for 1 s and sends the
next (about 50k requests/s offered). A request costs 100 us of GIL-releasing CPU work and 10 us of
pure Python. For each architecture that serves more than one connection at a time: the fewest
cores that hold p99 <= 50 ms within 16 GiB.

Two stages, the usual pattern when the simulator is too slow to scan everything at this size:
  1. scan every core count with simkit.analytic (a queueing approximation: milliseconds a point);
  2. check each model's answer, and the core counts just below and above it, with the simulator.

Run: python experiments/cores_for_50k_clients.py    (copy it and change the numbers)
"""

from experiments.planning import build_grid, capacity, meets
from experiments.sweep import sweep
from experiments.windows import WindowPolicy
from simkit import registry
from simkit.analytic import analytic
from simkit.profile import resolve_profile
from simkit.scenario import Hardware, Scenario, Workload

CLIENTS = 50_000
SLO_P99_S = 0.050
MEMORY_BYTES = 16 * 2**30
# A server that serves one connection until it closes cannot hold 50k clients: leave those out.
MODELS = [a.name for a in registry.architectures() if not a.one_connection_at_a_time]
CORES = [2, 4, 8, 16, 32, 64]


def main() -> None:
    profile = resolve_profile()  # $SERVERLAB_PROFILE, else this host's calibrated profile, else built-in (warns)
    print(f"profile: {profile.describe()}")
    base = Scenario(
        # fd_limit raised and backlog = somaxconn, as any server holding 50k sockets is configured;
        # threads_max is the usual 30k (thread-per-connection will meet it).
        hardware=Hardware(memory_bytes=MEMORY_BYTES, fd_limit=1 << 20, threads_max=30_000, somaxconn=4096),
        workload=Workload(mode="closed", think_s=1.0, cpu_us=100, gil_us=10),
    ).replace(backlog=4096)
    # 1. coarse scan (each model's knobs sized per core count by the registry's rules: planning.Sizing)
    coarse = sweep(base, models=MODELS, cores=CORES, connections=[CLIENTS], simulate=analytic,
                   profile=profile, description="analytic scan")
    ok = meets(coarse, SLO_P99_S, MEMORY_BYTES)
    # 2. simulate each model's smallest passing core count, the one below and the one above it (the window is sized
    #    per point to cover the 50k-connection ramp and ~2000 completions; nothing priced out).
    confirm = []
    for model in coarse["model"].unique():
        passing = sorted(coarse[ok & (coarse["model"] == model)]["cores"])
        if passing:
            i = CORES.index(passing[0])
            confirm += [(model, c) for c in CORES[max(0, i - 1): i + 2]]
    picked = [s for s in coarse_scenarios(base) if (s.model.name, s.hardware.cores) in confirm]
    fine = sweep(base, scenarios=picked, window=WindowPolicy(max_sim_requests=10**9), profile=profile,
                 description="simulating")

    print(f"\n{CLIENTS:,} keep-alive clients, 1 s think time, p99 <= {SLO_P99_S * 1e3:g} ms, "
          f"RSS <= {MEMORY_BYTES / 2**30:g} GiB")
    cap = capacity(coarse, SLO_P99_S, MEMORY_BYTES).set_index("model")
    fine_ok = fine[meets(fine, SLO_P99_S, MEMORY_BYTES)] if not fine.empty else fine
    for model in cap.index:
        if not cap.loc[model, "meets_slo"]:
            print(f"  {model:20s} no core count up to {max(CORES)} works (analytic): {cap.loc[model, 'why']}")
            continue
        sim_rows = fine[fine["model"] == model].sort_values("cores")
        sim_pass = fine_ok[fine_ok["model"] == model]["cores"]
        a_cores = int(cap.loc[model, "cores"])
        if sim_pass.empty:
            verdict = "simulator: none of " + ", ".join(str(c) for c in sim_rows["cores"]) + " cores hold"
        else:
            s_cores = int(sim_pass.min())
            verdict = f"simulator: {s_cores} cores" + (" (agrees)" if s_cores == a_cores else " (trust this one)")
        print(f"  {model:20s} analytic: {a_cores} cores; {verdict}")
        for r in sim_rows.itertuples():
            print(f"      sim {r.cores:3d} cores: {r.throughput_rps:9,.0f} req/s, p99 {r.latency_p99_s * 1e3:8.1f} ms, "
                  f"RSS {r.rss_peak_bytes / 2**20:7,.0f} MiB {('failure: ' + r.failure) if r.failure else ''}")


def coarse_scenarios(base: Scenario) -> list[Scenario]:
    return build_grid(base, MODELS, CORES, [CLIENTS])


if __name__ == "__main__":
    main()
