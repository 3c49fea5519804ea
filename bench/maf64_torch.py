#!/usr/bin/env python3
"""bench/maf64_torch.py - the PyTorch side of bench/README.md's "maf64"
section: the same configuration as bench/maf64.flow timed the way
bench/maf_bench.c times flowkit (one JSON line, the same keys).

  5 MAF layers (affine, scale exp(5 tanh(s/5)), MADE 512 x 512 ReLU,
  natural order, a reversal between layers), 64-D standard normal rows,
  Adam lr 1e-3, batch 256; log-density at batch 4096 without autograd;
  sampling by D sequential MADE passes per layer (the usual MAF sampler,
  Papamakarios et al. 2017, sec. 3.1), without autograd.

  /usr/bin/python3 bench/maf64_torch.py --threads 2
  /usr/bin/python3 bench/maf64_torch.py --threads 2 --only sample

The model classes are bench/ref_torch.py's (MADE, MAF, Reverse, Flow).
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_torch import MAF, Flow, Reverse  # noqa: E402


def build(d, hidden, layers):
    ls = []
    for _ in range(layers):
        ls += [MAF(d, hidden), Reverse()]
    return Flow(ls, ctx=True)


@torch.no_grad()
def sample(model, z):
    """x = f^-1(z): layers in reverse; a MAF layer one dimension per MADE
    pass (x_i = (z_i - t_i(x_<i)) exp(-s_i(x_<i)))."""
    x = z
    for layer in reversed(model.layers):
        if isinstance(layer, Reverse):
            x = x.flip(1)
            continue
        zz, x = x, torch.zeros_like(x)
        for i in range(zz.shape[1]):
            theta = layer.made(x)
            s = 5.0 * torch.tanh(theta[:, i, 0] / 5.0)
            x[:, i] = (zz[:, i] - theta[:, i, 1]) * torch.exp(-s)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", default="512,512")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--logprob-batch", type=int, default=4096)
    ap.add_argument("--logprob-reps", type=int, default=10)
    ap.add_argument("--sample-n", type=int, default=1024)
    ap.add_argument("--sample-reps", type=int, default=3)
    ap.add_argument("--only", choices=["train", "logprob", "sample"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    hidden = [int(h) for h in a.hidden.split(",")]
    model = build(a.dim, hidden, a.layers)
    x = torch.randn(a.rows, a.dim)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        idx = torch.randint(0, a.rows, (a.batch,))
        loss = -model.log_prob(x[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    out = {"impl": "pytorch " + torch.__version__, "threads": a.threads,
           "batch": a.batch, "train_steps_per_s": 0.0, "final_loss": 0.0,
           "logprob_batch": a.logprob_batch, "logprob_samples_per_s": 0.0,
           "sample_n": a.sample_n, "sample_samples_per_s": 0.0}
    for _ in range(3):                      # warm-up (and a non-zero net)
        out["final_loss"] = step()
    if a.only in (None, "train"):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(a.steps):
            out["final_loss"] = step()
        out["train_steps_per_s"] = a.steps / (time.perf_counter() - t0)
        out["train_cpu_ms_per_step"] = (1e3 * (time.process_time() - c0)
                                        / a.steps)
    if a.only in (None, "logprob"):
        xb = x[:a.logprob_batch]
        with torch.no_grad():
            model.log_prob(xb)
            t0 = time.perf_counter()
            for _ in range(a.logprob_reps):
                model.log_prob(xb)
            out["logprob_samples_per_s"] = (a.logprob_batch * a.logprob_reps
                                            / (time.perf_counter() - t0))
    if a.only in (None, "sample"):
        t0 = time.perf_counter()
        for _ in range(a.sample_reps):
            sample(model, torch.randn(a.sample_n, a.dim))
        out["sample_samples_per_s"] = (a.sample_n * a.sample_reps
                                       / (time.perf_counter() - t0))
    out["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))


if __name__ == "__main__":
    main()
