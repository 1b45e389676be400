"""Per-token probe scoring cost against the memory bound -> results/bench_probes.json.

For N concepts, `ProbeBank.score` of one hidden state reads an [N, hidden] fp32 weight matrix
once; no implementation can beat (bytes of weights) / (memory bandwidth). The bandwidth is
measured in the same run by summing a 1 GiB tensor (a pure streaming read). Weights are
random: only the shape matters for speed.

    python -m experiments.bench_probes [--hidden 640] [--sizes 1000 5600 20000 100000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hatcat.paths import RESULTS
from hatcat.probes import ProbeBank, ProbePack

OUT = RESULTS / "bench_probes.json"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(device: torch.device) -> float:
    """Bytes per second of a streaming read (sum of a 1 GiB fp32 tensor)."""
    big = torch.ones(256 * 1024 * 1024, device=device)
    seconds = median_seconds(lambda: big.sum().item(), 7)
    return big.numel() * 4 / seconds


def random_bank(n: int, hidden: int, device: torch.device) -> ProbeBank:
    side = {"weight": torch.randn(n, hidden) / hidden**0.5, "bias": torch.zeros(n)}
    manifest = {
        "concepts": [f"C{i}" for i in range(n)],
        "tap_layer": 12,
        "pooling": "last",
        "thresholds": {"activation": [0.5] * n, "text": [0.5] * n},
    }
    return ProbeBank(ProbePack(Path("."), manifest, {"activation": side, "text": dict(side)}, {}), device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=640, help="hidden size (640 = Gemma 3 270M)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5600, 20000, 100000])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    bandwidth = read_bandwidth(device)
    rows = []
    for n in args.sizes:
        bank = random_bank(n, args.hidden, device)
        hidden = torch.randn(args.hidden, device=device)

        def step(bank: ProbeBank = bank, hidden: torch.Tensor = hidden) -> None:
            bank.score(hidden)
            sync()

        seconds = median_seconds(step, 50)
        bound = n * args.hidden * 4 / bandwidth
        rows.append(
            {
                "n_concepts": n,
                "ms_per_token": round(seconds * 1e3, 4),
                "bound_ms": round(bound * 1e3, 4),
                "ratio": round(seconds / bound, 2),
            }
        )
        print(rows[-1], flush=True)
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "hidden": args.hidden,
        "bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "sizes": rows,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
