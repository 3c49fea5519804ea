#!/usr/bin/env python3
"""bench/ref_torch.py - PyTorch reference for flowkit's benchmarks and
quality anchors: the same architectures, optimizer, data and budget.

Only a benchmark reference (python3-torch from Debian); never a dependency
of flowkit or its tests.

  ref_torch.py realnvp --train train.csv --test test.csv --steps 2000

prints one JSON line: steps/s and KL(true || model) when the test file has a
true log-density column "logprob".
"""
import argparse
import json
import math
import sys
import time

import torch


def read_csv(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
        rows = [[float(v) for v in line.split(",")] for line in f if line.strip()]
    t = torch.tensor(rows, dtype=torch.float32)
    return header, t


class Coupling(torch.nn.Module):
    """Affine coupling (RealNVP): the same parametrisation as flowkit's
    `coupling(transformer = affine)`: scale = exp(5 tanh(s / 5))."""

    def __init__(self, mask, hidden, clamp=5.0):
        super().__init__()
        self.register_buffer("mask", mask)
        d = mask.numel()
        dc = int((mask == 0).sum())
        dt = d - dc
        layers, w = [], dc
        for h in hidden:
            layers += [torch.nn.Linear(w, h), torch.nn.ReLU()]
            w = h
        last = torch.nn.Linear(w, 2 * dt)
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = torch.nn.Sequential(*layers)
        self.t_idx = (mask == 1).nonzero().flatten()
        self.c_idx = (mask == 0).nonzero().flatten()
        self.clamp = clamp

    def forward(self, x):
        h = x[:, self.c_idx]
        theta = self.net(h).view(x.shape[0], -1, 2)
        s = self.clamp * torch.tanh(theta[..., 0] / self.clamp)
        t = theta[..., 1]
        z = x.clone()
        z[:, self.t_idx] = x[:, self.t_idx] * torch.exp(s) + t
        return z, s.sum(dim=1)


class RealNVP(torch.nn.Module):
    def __init__(self, d, layers, hidden):
        super().__init__()
        mods = []
        for i in range(layers):
            mask = torch.tensor([1.0 if j % 2 == i % 2 else 0.0 for j in range(d)])
            mods.append(Coupling(mask, hidden))
        self.layers = torch.nn.ModuleList(mods)

    def log_prob(self, x):
        ld = torch.zeros(x.shape[0])
        for layer in self.layers:
            x, l = layer(x)
            ld = ld + l
        base = -0.5 * (x ** 2).sum(dim=1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
        return base + ld


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["realnvp"])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", default="128,128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    hdr, x = read_csv(a.train)
    x = x[:, :2] if "logprob" in hdr else x
    hidden = [int(h) for h in a.hidden.split(",")]
    model = RealNVP(x.shape[1], a.layers, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    n = x.shape[0]
    perm = torch.randperm(n)
    pos = 0
    t0 = time.time()
    for step in range(a.steps):
        if pos >= n:
            perm, pos = torch.randperm(n), 0
        idx = perm[pos:pos + a.batch]
        pos += a.batch
        loss = -model.log_prob(x[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.5f}", file=sys.stderr)
    secs = time.time() - t0
    out = {"model": a.model, "steps": a.steps, "seconds": secs,
           "steps_per_s": a.steps / secs, "final_loss": loss.item()}
    if a.test:
        hdr, t = read_csv(a.test)
        with torch.no_grad():
            lp = model.log_prob(t[:, :2]).mean().item()
        out["test_loglik"] = lp
        if "logprob" in hdr:
            out["kl"] = t[:, hdr.index("logprob")].mean().item() - lp
    print(json.dumps(out))


if __name__ == "__main__":
    main()
