"""Thread per connection vs a reactor with a worker pool, when every request makes a blocking
database call (5 ms io_us) plus 100 us of CPU work.

The question behind it: m2 gives every connection its own thread (simple, but a thread's memory
and the threads_max limit per client); m4 keeps one event loop and a fixed pool of workers that
make the blocking call (the pool size caps concurrency: pool / 5 ms requests/s); m3 does the call
inline and stalls everyone. Where does each one stop, and how large must m4's pool be?

Run: python experiments/threads_vs_reactor_db.py
"""

from experiments.planning import capacity
from experiments.sweep import sweep
from experiments.windows import WindowPolicy
from simkit import registry
from simkit.profile import resolve_profile
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

SLO_P99_S = 0.100
MEMORY_BYTES = 8 * 2**30
CORES = 4


def main() -> None:
    profile = resolve_profile()  # $SERVERLAB_PROFILE, else this host's calibrated profile, else built-in (warns)
    print(f"profile: {profile.describe()}")
    base = Scenario(
        hardware=Hardware(cores=CORES, memory_bytes=MEMORY_BYTES, fd_limit=1 << 20, threads_max=10_000),
        workload=Workload(think_s=0.5, cpu_us=100, io_us=5_000),
    ).replace(backlog=4096)
    # ModelSpecs are used exactly as given: three pool sizes for m4.
    models = [ModelSpec(name="m2"), ModelSpec(name="m3"),
              ModelSpec(name="m4", pool=16), ModelSpec(name="m4", pool=64), ModelSpec(name="m4", pool=256)]
    # Windows sized per point (warm-up past the ramp and one think time, ~2000 completions); every
    # point simulated (no analytic stand-ins), which takes a minute or two on a small box.
    frame = sweep(base, models=models, cores=[CORES], connections=[10, 100, 1000, 5000, 20000],
                  window=WindowPolicy(max_sim_requests=10**9), profile=profile)
    frame["label"] = [_label(ModelSpec(name=r.model, threads=r.threads, processes=r.processes, pool=r.pool))
                      for r in frame.itertuples()]
    print(f"{CORES} cores, 5 ms blocking call + 100 us CPU per request, 0.5 s think time\n")
    print(frame.pivot(index="connections", columns="label", values="throughput_rps").round(0).to_string())
    print("\np99 (ms):")
    print((frame.pivot(index="connections", columns="label", values="latency_p99_s") * 1e3).round(1).to_string())
    # capacity() is per model name: run it per label (model and knobs) so the three pool sizes are not merged.
    print(f"\nCapacity at p99 <= {SLO_P99_S * 1e3:g} ms:")
    for label, rows in frame.groupby("label"):
        cap = capacity(rows, SLO_P99_S, MEMORY_BYTES).iloc[0]
        print(f"  {label:14s} up to {cap['max_connections']:6,} connections; then {cap['reason'] or '-'}: {cap['why']}")


def _label(spec: ModelSpec) -> str:
    """The model's short name and its knobs, e.g. 'm4 pool=16'."""
    arch = registry.get(spec.name)
    return arch.short + arch.describe(spec).removeprefix(arch.name)


if __name__ == "__main__":
    main()
