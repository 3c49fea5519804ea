#!/usr/bin/env python3
"""bench/ref_torch.py - PyTorch reference for flowkit's benchmarks and
quality anchors: the same architectures, optimizer, data and budget.

Only a benchmark reference (python3-torch from Debian); never a dependency
of flowkit or its tests.

  ref_torch.py realnvp --train train.csv --test test.csv --steps 2000
  ref_torch.py ffjord --train train.csv --test test.csv --steps 300

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


class ConcatMLP(torch.nn.Module):
    """flowkit's MLP with `time = concat`: t appended to every layer's
    input (tanh hidden layers, linear output)."""

    def __init__(self, d, hidden):
        super().__init__()
        ws, w = [], d
        for h in hidden + [d]:
            ws.append(torch.nn.Linear(w + 1, h))
            w = h
        self.lins = torch.nn.ModuleList(ws)

    def forward(self, z, t):
        tt = torch.full((z.shape[0], 1), float(t))
        h = z
        for i, lin in enumerate(self.lins):
            h = lin(torch.cat([h, tt], dim=1))
            if i + 1 < len(self.lins):
                h = torch.tanh(h)
        return h


class FFJORD(torch.nn.Module):
    """One continuous flow dz/dt = f(z, t) on [t0, t1], RK4 with fixed
    steps, exact trace (one autograd pass per dimension), backprop through
    the solver: flowkit's `ode(time = concat, solver = rk4(steps),
    trace = exact, gradient = backprop)`."""

    def __init__(self, d, hidden, steps, t0=0.0, t1=1.0):
        super().__init__()
        self.f = ConcatMLP(d, hidden)
        self.steps, self.t0, self.t1 = steps, t0, t1

    def dyn(self, z, t):
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.requires_grad_(True)
            dz = self.f(z, t)
            tr = torch.zeros(z.shape[0])
            for i in range(z.shape[1]):
                tr = tr + torch.autograd.grad(dz[:, i].sum(), z,
                                              create_graph=True)[0][:, i]
        return dz, tr

    def log_prob(self, x):
        z = x.clone().requires_grad_(True)
        l = torch.zeros(x.shape[0])
        h = (self.t1 - self.t0) / self.steps
        for k in range(self.steps):
            t = self.t0 + k * h
            k1, l1 = self.dyn(z, t)
            k2, l2 = self.dyn(z + h / 2 * k1, t + h / 2)
            k3, l3 = self.dyn(z + h / 2 * k2, t + h / 2)
            k4, l4 = self.dyn(z + h * k3, t + h)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            l = l + h / 6 * (l1 + 2 * l2 + 2 * l3 + l4)
        base = -0.5 * (z ** 2).sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
        return base + l


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["realnvp", "ffjord"])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", default="128,128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ode-steps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    hdr, x = read_csv(a.train)
    x = x[:, :2] if "logprob" in hdr else x
    if a.model == "ffjord" and a.hidden == "128,128":
        a.hidden = "64,64,64"
    hidden = [int(h) for h in a.hidden.split(",")]
    if a.model == "ffjord":
        model = FFJORD(x.shape[1], hidden, a.ode_steps)
    else:
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
        lp = 0.0
        for i in range(0, t.shape[0], 1000):
            lp += model.log_prob(t[i:i + 1000, :2]).detach().sum().item()
        lp /= t.shape[0]
        out["test_loglik"] = lp
        if "logprob" in hdr:
            out["kl"] = t[:, hdr.index("logprob")].mean().item() - lp
    print(json.dumps(out))


if __name__ == "__main__":
    main()
