"""What the GIL costs model 4 (reactor + worker pool).

The same m4 architecture simulated twice: as the Python server it is (gil=True: pure-Python work
and request parsing hold the GIL, so workers queue for it) and as if written in C (gil=False). The
ratio of their throughputs, per core count and per amount of pure-Python work, is the GIL's price.

Run: python experiments/gil_cost_m4.py
"""

from experiments.sweep import sweep
from experiments.windows import WindowPolicy
from simkit import registry
from simkit.profile import resolve_profile
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

MODEL = "m4"  # the architecture under study (registry name, number or short name): reactor + worker pool

CORES = [1, 2, 4, 8, 16]
GIL_US = [0, 50, 200]  # pure-Python microseconds per request, on top of 200 us of GIL-free work


def main() -> None:
    profile = resolve_profile()  # $SERVERLAB_PROFILE, else this host's calibrated profile, else built-in (warns)
    print(f"profile: {profile.describe()}")
    base = Scenario(hardware=Hardware(fd_limit=1 << 20),
                    workload=Workload(connections=256, cpu_us=200))
    # An explicit scenario list (instead of a models x cores x connections grid) lets gil_us and the
    # gil flag vary too; sweep() still runs them all in parallel, in this order.
    scenarios = [
        base.replace(model=ModelSpec(name=MODEL, pool=2 * cores, gil=gil), cores=cores, gil_us=gil_us)
        for gil_us in GIL_US for gil in (True, False) for cores in CORES
    ]
    # Each point's simulated window is sized for ~2000 completions (more for the faster points).
    frame = sweep(base, scenarios=scenarios, window=WindowPolicy(target_requests=3000, max_sim_requests=10**9),
                  profile=profile)
    rate = frame.set_index(["gil_us", "gil", "cores"])["throughput_rps"]
    cpu = frame.set_index(["gil_us", "gil", "cores"])["cpu_util"]
    print(f"{registry.get(MODEL).name} (pool = 2 x cores), 256 clients, 200 us GIL-free work + gil_us pure Python")
    print(f"{'gil_us':>6} {'cores':>5} {'with GIL req/s':>15} {'no GIL req/s':>13} {'GIL keeps':>10} {'CPU used':>9}")
    for gil_us in GIL_US:
        for cores in CORES:
            with_gil, no_gil = rate[(gil_us, True, cores)], rate[(gil_us, False, cores)]
            print(f"{gil_us:6d} {cores:5d} {with_gil:15,.0f} {no_gil:13,.0f} {with_gil / no_gil:9.0%} "
                  f"{cpu[(gil_us, True, cores)]:6.2f}/{cores}")


if __name__ == "__main__":
    main()
