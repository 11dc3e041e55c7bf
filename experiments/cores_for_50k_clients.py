"""How many cores for 50k keep-alive clients at p99 <= 50 ms?

Each of 50,000 keep-alive clients sends a request, reads the answer, thinks for 1 s and sends the
next (about 50k requests/s offered). A request costs 100 us of GIL-releasing CPU work and 10 us of
pure Python. For each architecture: the fewest cores that hold p99 <= 50 ms within 16 GiB, or why
none of the sizes tried does.

Run: python experiments/cores_for_50k_clients.py    (copy it and change the numbers)
"""

from experiments.planning import capacity, meets, sweep
from simkit.scenario import Hardware, Scenario, Workload

CLIENTS = 50_000
SLO_P99_S = 0.050
MEMORY_BYTES = 16 * 2**30


def main() -> None:
    base = Scenario(
        # fd_limit raised as any server holding 50k sockets must; threads_max is the usual 30k.
        hardware=Hardware(memory_bytes=MEMORY_BYTES, fd_limit=1 << 20, threads_max=30_000),
        workload=Workload(mode="closed", think_s=1.0, cpu_us=100, gil_us=10,
                          duration_s=1.0, warmup_s=0.5),  # simulated seconds per point: short, steady state
    )
    # Each model is sized for each core count (m5/m7 threads, m6 processes = cores; m4 pool = 4 x cores).
    frame = sweep(base, models=["m2", "m3", "m4", "m5", "m6", "m7"], cores=[2, 4, 8, 16, 32],
                  connections=[CLIENTS])
    ok = frame[meets(frame, SLO_P99_S, MEMORY_BYTES)]
    cap = capacity(frame, SLO_P99_S, MEMORY_BYTES).set_index("model")
    print(f"{CLIENTS:,} keep-alive clients, 1 s think time, p99 <= {SLO_P99_S * 1e3:g} ms, "
          f"RSS <= {MEMORY_BYTES / 2**30:g} GiB")
    for model in cap.index:
        fits = ok[ok["model"] == model].sort_values("cores")
        if fits.empty:
            print(f"  {model:20s} no size tried works: {cap.loc[model, 'reason']} - {cap.loc[model, 'why']}")
        else:
            r = fits.iloc[0]
            print(f"  {model:20s} {int(r['cores']):3d} cores: {r['throughput_rps']:9,.0f} req/s, "
                  f"p99 {r['latency_p99_s'] * 1e3:6.1f} ms, RSS {r['rss_peak_bytes'] / 2**20:7,.0f} MiB")


if __name__ == "__main__":
    main()
