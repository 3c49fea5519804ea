#!/usr/bin/env python3
"""bench/maf64_summary.py - medians and ratios of bench/maf64_compare.sh's
JSON lines: per OpenBLAS environment and phase, flowkit and PyTorch
medians, flowkit / PyTorch, the load averages seen, and peak memory; for
training also GFLOP/s (GEMM multiply-adds only: per MADE forward
2 n (D H1 + H1 H2 + H2 2D), training counted as 3 forwards)."""
import json
import statistics
import sys

KEY = {"train": "train_steps_per_s", "logprob": "logprob_samples_per_s",
       "sample": "sample_samples_per_s"}


def gemm_flops_per_step(batch=256, d=64, h1=512, h2=512, layers=5):
    return 3 * layers * 2 * batch * (d * h1 + h1 * h2 + h2 * 2 * d)


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    for env in ("default", "unset"):
        for phase in ("train", "logprob", "sample"):
            sel = [r for r in rows if r["env"] == env and r["phase"] == phase]
            if not sel:
                continue
            med, mem, loads = {}, {}, []
            for side in ("flowkit", "pytorch"):
                vals = [r["run"][KEY[phase]] for r in sel if r["side"] == side]
                mems = [r["run"]["peak_rss_kib"] for r in sel if r["side"] == side]
                loads += [r["load"] for r in sel if r["side"] == side]
                if vals:
                    med[side] = statistics.median(vals)
                    mem[side] = statistics.median(mems)
            if len(med) < 2:
                continue
            line = (f"{env:8s} {phase:8s} flowkit {med['flowkit']:10.1f}  "
                    f"pytorch {med['pytorch']:10.1f}  ratio "
                    f"{med['flowkit'] / med['pytorch']:6.2f}x  peak KiB "
                    f"{mem['flowkit']:.0f} / {mem['pytorch']:.0f}  load "
                    f"{min(loads):.1f}-{max(loads):.1f}")
            if phase == "train":
                g = gemm_flops_per_step() / 1e9
                line += (f"  GFLOP/s {med['flowkit'] * g:.0f} / "
                         f"{med['pytorch'] * g:.0f}")
            print(line)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "maf64_results.jsonl")
