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


def mlp(n_in, hidden, n_out, zero_last=True):
    layers, w = [], n_in
    for h in hidden:
        layers += [torch.nn.Linear(w, h), torch.nn.ReLU()]
        w = h
    last = torch.nn.Linear(w, n_out)
    if zero_last:
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    layers.append(last)
    return torch.nn.Sequential(*layers)


def rq_knots(theta, bins, bound, min_w=1e-3, min_h=1e-3, min_d=1e-3):
    """Knots of the spline from theta: x positions cw, y positions ch
    (K + 1 each, from -B to B) and derivatives d (K + 1, 1 at both ends)."""
    K = bins
    w = torch.softmax(theta[..., :K], -1)
    h = torch.softmax(theta[..., K:2 * K], -1)
    w = min_w + (1 - min_w * K) * w
    h = min_h + (1 - min_h * K) * h
    shift = math.log(math.exp(1 - min_d) - 1)
    d = min_d + torch.nn.functional.softplus(theta[..., 2 * K:] + shift)
    one = torch.ones(d.shape[:-1] + (1,))
    d = torch.cat([one, d, one], -1)
    cw = torch.nn.functional.pad(torch.cumsum(w, -1), (1, 0)) * 2 * bound - bound
    ch = torch.nn.functional.pad(torch.cumsum(h, -1), (1, 0)) * 2 * bound - bound
    cw[..., -1] = bound
    ch[..., -1] = bound
    return cw, ch, d


def rq_spline(x, theta, bins, bound, min_w=1e-3, min_h=1e-3, min_d=1e-3):
    """Monotone rational-quadratic spline on [-B, B], identity outside
    (Durkan et al. 2019, eqs. 4-5); theta = K widths, K heights, K-1
    derivatives, zero theta = identity (flowkit's parametrisation)."""
    cw, ch, d = rq_knots(theta, bins, bound, min_w, min_h, min_d)
    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound, bound)
    idx = (torch.searchsorted(cw[..., 1:-1].contiguous(), xc.unsqueeze(-1))).squeeze(-1)
    g = lambda t: t.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    x0, wk = g(cw[..., :-1]), g(cw[..., 1:]) - g(cw[..., :-1])
    y0, hk = g(ch[..., :-1]), g(ch[..., 1:]) - g(ch[..., :-1])
    d0, d1 = g(d[..., :-1]), g(d[..., 1:])
    s = hk / wk
    xi = (xc - x0) / wk
    num = hk * (s * xi ** 2 + d0 * xi * (1 - xi))
    den = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
    y = y0 + num / den
    dnum = s ** 2 * (d1 * xi ** 2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2)
    lad = torch.log(dnum) - 2 * torch.log(den)
    return torch.where(inside, y, x), torch.where(inside, lad, torch.zeros_like(x))


class GenCoupling(torch.nn.Module):
    """Coupling with an affine, additive or spline transformer."""

    def __init__(self, mask, hidden, kind="affine", bins=8, bound=3.0):
        super().__init__()
        self.t_idx = (mask == 1).nonzero().flatten()
        self.c_idx = (mask == 0).nonzero().flatten()
        self.kind, self.bins, self.bound = kind, bins, bound
        self.P = {"affine": 2, "additive": 1, "spline": 3 * bins - 1}[kind]
        self.net = mlp(len(self.c_idx), hidden, len(self.t_idx) * self.P)

    def forward(self, x):
        theta = self.net(x[:, self.c_idx]).view(x.shape[0], -1, self.P)
        u = x[:, self.t_idx]
        if self.kind == "affine":
            s = 5.0 * torch.tanh(theta[..., 0] / 5.0)
            v, lad = u * torch.exp(s) + theta[..., 1], s
        elif self.kind == "additive":
            v, lad = u + theta[..., 0], torch.zeros_like(u)
        else:
            v, lad = rq_spline(u, theta, self.bins, self.bound)
        z = x.clone()
        z[:, self.t_idx] = v
        return z, lad.sum(dim=1)


MADE_INIT = "torch"      # --made-init: "torch" (full fan-in) or "masked"


class MADE(torch.nn.Module):
    """MADE (Germain et al. 2015), natural order, P outputs per dimension."""

    def __init__(self, d, hidden, P, ctx=0):
        super().__init__()
        self.d, self.P = d, P
        deg_in = torch.arange(1, d + 1)
        degs, masks, w = [deg_in], [], d
        for h in hidden:
            dh = torch.arange(h) % max(1, d - 1) + 1
            masks.append((dh[:, None] >= degs[-1][None, :]).float())
            degs.append(dh)
        out_deg = deg_in.repeat_interleave(P)
        masks.append((out_deg[:, None] > degs[-1][None, :]).float())
        sizes = [d] + list(hidden) + [d * P]
        self.lins = torch.nn.ModuleList(
            torch.nn.Linear(sizes[i] + (ctx if i == 0 else 0), sizes[i + 1])
            for i in range(len(sizes) - 1))
        for i, m in enumerate(masks):
            if i == 0 and ctx:
                m = torch.cat([m, torch.ones(m.shape[0], ctx)], 1)
            self.register_buffer(f"m{i}", m)
        if MADE_INIT == "masked":
            # flowkit's convention: U(+-1/sqrt(fan_in)) with fan_in the
            # row's unmasked inputs (torch's default counts all columns)
            with torch.no_grad():
                for i, lin in enumerate(self.lins):
                    m = getattr(self, f"m{i}")
                    b = 1.0 / m.sum(1).clamp(min=1).sqrt()
                    lin.weight.copy_((torch.rand_like(lin.weight) * 2 - 1) * b[:, None])
                    lin.bias.copy_((torch.rand_like(lin.bias) * 2 - 1) * b)
        torch.nn.init.zeros_(self.lins[-1].weight)
        torch.nn.init.zeros_(self.lins[-1].bias)

    def forward(self, x, c=None):
        h = x if c is None else torch.cat([x, c], 1)
        for i, lin in enumerate(self.lins):
            h = torch.nn.functional.linear(h, lin.weight * getattr(self, f"m{i}"), lin.bias)
            if i + 1 < len(self.lins):
                h = torch.relu(h)
        return h.view(x.shape[0], self.d, self.P)


class MAF(torch.nn.Module):
    def __init__(self, d, hidden, ctx=0):
        super().__init__()
        self.made = MADE(d, hidden, 2, ctx)

    def forward(self, x, c=None):
        theta = self.made(x, c)
        s = 5.0 * torch.tanh(theta[..., 0] / 5.0)
        return x * torch.exp(s) + theta[..., 1], s.sum(dim=1)


class Reverse(torch.nn.Module):
    def forward(self, x, c=None):
        return x.flip(1), torch.zeros(x.shape[0])


class Flow(torch.nn.Module):
    """Layers in forward order, optional exits (first k dims leave)."""

    def __init__(self, layers, exits=None, ctx=False):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)
        self.exits = exits or {}
        self.ctx = ctx

    def log_prob(self, x, c=None):
        ld = torch.zeros(x.shape[0])
        base = torch.zeros(x.shape[0])
        for i, layer in enumerate(self.layers):
            if i in self.exits:
                k = self.exits[i]
                base = base - 0.5 * (x[:, :k] ** 2).sum(1) - 0.5 * k * math.log(2 * math.pi)
                x = x[:, k:]
            x, l = layer(x, c) if self.ctx else layer(x)
            ld = ld + l
        base = base - 0.5 * (x ** 2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
        return base + ld


class NiceScale(torch.nn.Module):
    """actnorm: z = x exp(s) + t (no data init in this reference)."""

    def __init__(self, d):
        super().__init__()
        self.s = torch.nn.Parameter(torch.zeros(d))
        self.t = torch.nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return x * torch.exp(self.s) + self.t, self.s.sum().expand(x.shape[0])


def build(name, d, ctx_dim, nsf=None):
    par = lambda i: torch.tensor([1.0 if j % 2 == i % 2 else 0.0 for j in range(d)])
    if name == "nsf":
        # nsf: (layers, hidden, bins, bound); the default is
        # specs/nsf_8gaussians.flow, issue 8's nsf8 is (6, [128, 128], 8, 3)
        layers, hidden, bins, bound = nsf or (4, [64, 64], 8, 4.0)
        return Flow([GenCoupling(par(i), hidden, "spline", bins, bound)
                     for i in range(layers)])
    if name == "moons":
        return Flow([GenCoupling(par(i), [64, 64]) for i in range(8)])
    if name == "nice":
        ls = [GenCoupling(par(i), [64, 64], "additive") for i in range(6)]
        return LogisticFlow(ls + [ActNorm(d)])
    if name == "iaf":
        ls = []
        for i in range(4):
            ls += [IAF(d, [64, 64]), Reverse()]
        return Flow(ls, ctx=True)
    if name == "maf":
        ls = []
        for i in range(5):
            ls += [MAF(d, [128, 128]), Reverse()]
        return Flow(ls, ctx=True)
    if name == "cond_maf":
        ls = []
        for i in range(4):
            ls += [MAF(d, [64, 64], ctx_dim), Reverse()]
        return Flow(ls, ctx=True)
    if name == "multiscale":
        ls = [GenCoupling(par(i), [64, 64]) for i in range(2)]
        p2 = lambda i: torch.tensor([1.0 if j % 2 == i % 2 else 0.0 for j in range(d - 2)])
        ls += [GenCoupling(p2(i), [64, 64]) for i in range(2)]
        return Flow(ls, exits={2: 2})
    raise SystemExit(f"unknown model {name}")


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
    ap.add_argument("model", choices=["realnvp", "ffjord", "nsf", "maf", "cond_maf", "multiscale", "moons", "nice", "iaf"])
    ap.add_argument("--columns", type=int, default=None, help="data columns")
    ap.add_argument("--context", type=int, default=0, help="context columns after the data")
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
    ap.add_argument("--made-init", choices=["torch", "masked"], default="torch",
                    help="MADE init fan-in: all columns (torch) or unmasked (flowkit)")
    ap.add_argument("--nsf", default=None, metavar="L,H,BINS,BOUND",
                    help="nsf: layers, hidden width (two layers), bins, bound "
                         "(default 4,64,8,4; issue 8's nsf8: 6,128,8,3)")
    ap.add_argument("--logprob-batch", type=int, default=0,
                    help="after training, time log-densities (no autograd) "
                         "of batches of this many training rows")
    ap.add_argument("--logprob-reps", type=int, default=20)
    a = ap.parse_args()
    global MADE_INIT
    MADE_INIT = a.made_init
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    hdr, x = read_csv(a.train)
    dcols = a.columns or (2 if a.model in ("realnvp", "ffjord") else x.shape[1] - a.context)
    cx = x[:, dcols:dcols + a.context] if a.context else None
    x = x[:, :dcols]
    if a.model == "ffjord" and a.hidden == "128,128":
        a.hidden = "64,64,64"
    hidden = [int(h) for h in a.hidden.split(",")]
    if a.model == "realnvp":
        model = RealNVP(x.shape[1], a.layers, hidden)
        lp = lambda xx, cc: model.log_prob(xx)
    elif a.model == "ffjord":
        model = FFJORD(x.shape[1], hidden, a.ode_steps)
        lp = lambda xx, cc: model.log_prob(xx)
    else:
        nsf = None
        if a.nsf:
            L, H, K, B = a.nsf.split(",")
            nsf = (int(L), [int(H), int(H)], int(K), float(B))
        model = build(a.model, x.shape[1], a.context, nsf)
        lp = lambda xx, cc: model.log_prob(xx, cc)
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
        loss = -lp(x[idx], cx[idx] if cx is not None else None).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.5f}", file=sys.stderr)
    secs = time.time() - t0
    out = {"model": a.model, "steps": a.steps, "seconds": secs,
           "steps_per_s": a.steps / secs if a.steps else 0,
           "final_loss": loss.item() if a.steps else None}
    if a.logprob_batch:
        # log-density throughput: batches of the training rows, cycling
        b = a.logprob_batch
        xb = x[:b] if x.shape[0] >= b else x.repeat(b // x.shape[0] + 1, 1)[:b]
        cb = None
        if cx is not None:
            cb = cx[:b] if cx.shape[0] >= b else cx.repeat(b // cx.shape[0] + 1, 1)[:b]
        with torch.no_grad():
            lp(xb, cb)                      # warm-up
            t1 = time.time()
            for _ in range(a.logprob_reps):
                lp(xb, cb)
            el = time.time() - t1
        out["logprob_batch"] = b
        out["logprob_samples_per_s"] = b * a.logprob_reps / el
    if a.test:
        hdr, t = read_csv(a.test)
        tc = t[:, dcols:dcols + a.context] if a.context else None
        if a.model == "ffjord":     # the trace needs autograd: chunks
            vals = torch.cat([model.log_prob(t[i:i + 1000, :dcols]).detach()
                              for i in range(0, t.shape[0], 1000)])
        else:
            with torch.no_grad():
                vals = lp(t[:, :dcols], tc)
        out["test_loglik"] = vals.mean().item()
        out["test_stderr"] = (vals.std() / math.sqrt(len(vals))).item()
        if "logprob" in hdr:
            out["kl"] = t[:, hdr.index("logprob")].mean().item() - out["test_loglik"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
