#!/usr/bin/env python3
"""bench/ref_bench.py - the PyTorch side of bench/run: the four benchmark
configurations of bench/specs/ timed the way bench/flowbench times flowkit.

Run it with /usr/bin/python3 (Debian's python3-torch, PyTorch 1.13); it is a
benchmark reference only, never a dependency of flowkit or its tests.

  ref_bench.py CONFIG --data FILE --metric train|logprob|sample
               [--batch B] [--threads T] [--warmup W] [--iters N]
               [--min-time S] [--seed S]

CONFIG is realnvp2d, maf64, nsf8 or cnf2d (the architectures of
bench/specs/CONFIG.flow; the models are those of bench/ref_torch.py, plus
the inverses sampling needs; FILE an NPY file of rows), or glow_fashion
(specs/glow_fashion.flow, the model of bench/glow_torch.py; FILE a
Fashion-MNIST IDX file).  Prints one JSON object like flowbench's.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glow_torch as G  # noqa: E402
import ref_torch as R  # noqa: E402


def current_rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


# ------------------------------------------------------------- inverses

def coupling_inverse(layer, z):
    """Affine coupling inverse (RealNVP): x_t = (z_t - t) exp(-s), the
    conditioning part passes through (Dinh et al. 2017, eq. 8)."""
    theta = layer.net(z[:, layer.c_idx]).view(z.shape[0], -1, 2)
    s = layer.clamp * torch.tanh(theta[..., 0] / layer.clamp)
    x = z.clone()
    x[:, layer.t_idx] = (z[:, layer.t_idx] - theta[..., 1]) * torch.exp(-s)
    return x


def rq_spline_inverse(y, theta, bins, bound, min_w=1e-3, min_h=1e-3,
                      min_d=1e-3):
    """Inverse of R.rq_spline: the root in [0, 1) of the quadratic
    a xi^2 + b xi + c = 0 of Durkan et al. 2019, eqs. 6-8, taken in the
    stable form xi = 2c / (-b - sqrt(b^2 - 4ac)); identity outside
    [-B, B]."""
    cw, ch, d = R.rq_knots(theta, bins, bound, min_w, min_h, min_d)
    inside = (y > -bound) & (y < bound)
    yc = y.clamp(-bound, bound)
    idx = torch.searchsorted(ch[..., 1:-1].contiguous(),
                             yc.unsqueeze(-1)).squeeze(-1)
    g = lambda t: t.gather(-1, idx.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    x0, wk = g(cw[..., :-1]), g(cw[..., 1:]) - g(cw[..., :-1])
    y0, hk = g(ch[..., :-1]), g(ch[..., 1:]) - g(ch[..., :-1])
    d0, d1 = g(d[..., :-1]), g(d[..., 1:])
    s = hk / wk
    dy = yc - y0
    a = hk * (s - d0) + dy * (d1 + d0 - 2 * s)
    b = hk * d0 - dy * (d1 + d0 - 2 * s)
    c = -s * dy
    disc = (b * b - 4 * a * c).clamp(min=0)
    xi = 2 * c / (-b - torch.sqrt(disc))
    return torch.where(inside, x0 + xi * wk, y)


def gencoupling_inverse(layer, z):
    theta = layer.net(z[:, layer.c_idx]).view(z.shape[0], -1, layer.P)
    x = z.clone()
    x[:, layer.t_idx] = rq_spline_inverse(z[:, layer.t_idx], theta,
                                          layer.bins, layer.bound)
    return x


def maf_inverse(layer, z):
    """MAF sampling (Papamakarios et al. 2017, sec. 3.1): x_i =
    (z_i - t_i(x_<i)) exp(-s_i(x_<i)), one MADE pass per dimension."""
    x = torch.zeros_like(z)
    for i in range(z.shape[1]):
        theta = layer.made(x)
        s = 5.0 * torch.tanh(theta[:, i, 0] / 5.0)
        x[:, i] = (z[:, i] - theta[:, i, 1]) * torch.exp(-s)
    return x


class CNF(R.FFJORD):
    """R.FFJORD with the higher-order graph kept only when training (the
    trace's vector-Jacobian products need create_graph for backprop, not
    for evaluation), and sampling: RK4 from t1 back to t0 without the
    trace."""

    def dyn(self, z, t):
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.requires_grad_(True)
            dz = self.f(z, t)
            tr = torch.zeros(z.shape[0])
            d = z.shape[1]
            for i in range(d):
                tr = tr + torch.autograd.grad(
                    dz[:, i].sum(), z, create_graph=self.training,
                    retain_graph=self.training or i + 1 < d)[0][:, i]
        if not self.training:
            dz, tr = dz.detach(), tr.detach()
        return dz, tr

    def sample_from(self, z):
        h = (self.t0 - self.t1) / self.steps
        for k in range(self.steps):
            t = self.t1 + k * h
            k1 = self.f(z, t)
            k2 = self.f(z + h / 2 * k1, t + h / 2)
            k3 = self.f(z + h / 2 * k2, t + h / 2)
            k4 = self.f(z + h * k3, t + h)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return z


# ---------------------------------------------------------------- models

def parity(d, i):
    return torch.tensor([1.0 if j % 2 == i % 2 else 0.0 for j in range(d)])


class Bench:
    """A configuration: log_prob(x) and sample(n) over one torch module."""

    def __init__(self, name, d):
        self.name, self.d = name, d
        if name == "realnvp2d":
            self.model = R.RealNVP(d, 8, [128, 128])
        elif name == "maf64":
            layers = []
            for _ in range(5):
                layers += [R.MAF(d, [512, 512]), R.Reverse()]
            self.model = R.Flow(layers, ctx=True)
        elif name == "nsf8":
            self.model = R.Flow([R.GenCoupling(parity(d, i), [128, 128],
                                               "spline", 8, 3.0)
                                 for i in range(6)])
        elif name == "cnf2d":
            self.model = CNF(d, [64, 64, 64], 10)
        elif name == "glow_fashion":
            self.model = G.Glow()
        else:
            raise SystemExit(f"ref_bench.py: unknown configuration {name}")

    def log_prob(self, x):
        if self.name == "maf64":
            return self.model.log_prob(x, None)
        return self.model.log_prob(x)

    @torch.no_grad()
    def sample(self, n):
        if self.name == "glow_fashion":
            return self.model.sample(n).flatten(1)
        z = torch.randn(n, self.d)
        if self.name == "realnvp2d":
            for layer in reversed(self.model.layers):
                z = coupling_inverse(layer, z)
        elif self.name == "nsf8":
            for layer in reversed(self.model.layers):
                z = gencoupling_inverse(layer, z)
        elif self.name == "maf64":
            for layer in reversed(self.model.layers):
                z = z.flip(1) if isinstance(layer, R.Reverse) \
                    else maf_inverse(layer, z)
        else:
            z = self.model.sample_from(z)
        return z


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", choices=["realnvp2d", "maf64", "nsf8", "cnf2d",
                                       "glow_fashion"])
    ap.add_argument("--data", required=True,
                    help="NPY file (rows x dim); IDX images for glow_fashion")
    ap.add_argument("--metric", required=True,
                    choices=["train", "logprob", "sample"])
    ap.add_argument("--batch", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    batch = a.batch or (512 if a.metric == "train" else 4096)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.config == "glow_fashion":
        x = G.read_idx(a.data)
        n, d = x.shape[0], x[0].numel()
    else:
        x = torch.from_numpy(np.load(a.data).astype(np.float32))
        n, d = x.shape
    if a.metric == "logprob":
        rows = x[torch.arange(batch) % n].contiguous()
    base_kib = current_rss_kib()
    b = Bench(a.config, d)
    params = sum(p.numel() for p in b.model.parameters())
    last = float("nan")

    if a.metric == "train":
        if a.config == "glow_fashion":  # actnorm: flowkit train's data init
            with torch.no_grad():
                b.model.eval()
                b.model.log_prob(x[:batch], init=True)
        b.model.train()
        opt = torch.optim.Adam(b.model.parameters(), lr=1e-3)
        state = {"perm": torch.randperm(n), "pos": 0}

        def step():
            if state["pos"] + batch > n:
                state["perm"], state["pos"] = torch.randperm(n), 0
            idx = state["perm"][state["pos"]:state["pos"] + batch]
            state["pos"] += batch
            loss = -b.log_prob(x[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()
    elif a.metric == "logprob":
        b.model.eval()

        def step():
            if a.config == "cnf2d":      # the trace needs autograd
                return b.log_prob(rows)[0].item()
            with torch.no_grad():
                return b.log_prob(rows)[0].item()
    else:
        b.model.eval()

        def step():
            return b.sample(batch)[0, 0].item()

    for _ in range(a.warmup):
        last = step()
    t0 = time.perf_counter()
    c0 = time.process_time()
    done = 0
    while done < a.iters or (a.min_time > 0
                             and time.perf_counter() - t0 < a.min_time):
        last = step()
        done += 1
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if not math.isfinite(last):
        raise SystemExit(f"ref_bench.py: {a.config} {a.metric}: "
                         f"non-finite value {last}")
    per_s = done / secs
    print(json.dumps({
        "mode": "torch", "config": a.config, "metric": a.metric,
        "torch": torch.__version__, "dim": d, "params": params,
        "batch": batch, "threads": torch.get_num_threads(),
        "warmup": a.warmup, "iters": done, "seconds": secs,
        "cpu_seconds": cpu,
        "iters_per_s": per_s, "rows_per_s": per_s * batch,
        "last_value": last,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "base_rss_kib": base_kib}))


if __name__ == "__main__":
    main()
