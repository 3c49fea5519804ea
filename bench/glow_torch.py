#!/usr/bin/env python3
"""bench/glow_torch.py - the PyTorch reference of specs/glow_fashion.flow
(Glow on Fashion-MNIST, Kingma & Dhariwal 2018): the same layers, density,
initialisation and optimizer as flowkit's, for bench/run's glow_fashion
configuration (speed through bench/ref_bench.py, bits/dim here).

Run it with /usr/bin/python3 (Debian's python3-torch); a benchmark
reference only, never a dependency of flowkit or its tests.

  glow_torch.py bpd --train TRAIN.idx.gz --test TEST.idx.gz --steps 300
                [--seed S] [--threads T] [--batch 64] [--test-rows N]
      trains from scratch (Adam, lr 1e-3) and prints one JSON object with
      the test bits/dim of the discrete images (as `flowkit eval`)
  glow_torch.py parity EXPORT.safetensors --data TEST.idx.gz
                --logprob LOGPROB.csv [--rows N]
      loads the weights `flowkit export` wrote into this model and compares
      its log-densities with those `flowkit logprob` wrote for the same
      images (max abs difference in nats)

Every layer follows flowkit's definition (docs/export.md, section 5, and
the plugins it cites), so that log-densities and bits/dim compare:
  dequantize  y = (x + u) / 256, u ~ U[0, 1) in training, 1/2 otherwise;
              log-det -D log 256 (plugins/dequantize.c)
  logit       s = a + (1 - 2a) y, z = log s - log(1 - s), a = 0.05;
              log-det sum log(1 - 2a) - log s - log(1 - s) (plugins/logit.c)
  squeeze     output channel c*4 + i*2 + j at (h, w) = input
              (c, 2h + i, 2w + j) (plugins/squeeze.c)
  actnorm     z = x exp(s_c) + t_c per channel, log-det H W sum s; data
              init on the first batch (evaluation mode): s = -log(sd + eps),
              t = -mean / (sd + eps), sd the population standard deviation
              over the batch's rows and pixels, eps 1e-6 (plugins/actnorm.c)
  conv1x1     W = P L U, L unit lower, U upper with diagonal exp(s), z = W x
              + b at every pixel, log-det H W sum s; zeros at init (W = P),
              P the Fisher-Yates shuffle of splitmix64 seed 0, the same for
              every conv1x1 (plugins/linear.c, plugins/common.h)
  coupling    channel mask: the first floor(C/2) channels condition and pass
              through; the net conv3x3(C_c -> 64) ReLU conv1x1(64 -> 64) ReLU
              conv3x3(64 -> 2 C_t), same padding, PyTorch's Conv2d init and
              the last layer zero; output channel 2c + p is parameter p of
              transformed channel c; affine with Glow's sigmoid scale
              and flowkit's floor m = e^-5 (runtime/transform.h): scale
              = m + (1 - m) sigmoid(s + 2), y = x scale + t, log-det sum
              log scale
  exit        the first K channels to N(0, I); the rest flows on
  base        N(0, I); loss = mean negative log-likelihood over the batch;
              Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8, no clipping,
              constant rate (runtime/train.c defaults)
"""
import argparse
import gzip
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

LEVELS = 256
ALPHA = 0.05
HIDDEN = 64
SIGMOID_SHIFT, SIGMOID_MIN = 2.0, math.exp(-5)   # runtime/transform.h
LOG2PI = math.log(2 * math.pi)


def read_idx(path, rows=None):
    """An IDX file of unsigned bytes (LeCun et al.: magic 0 0 8 ndim, then
    ndim big-endian sizes), gzip'd or not, as float32 (N, 1, H, W)."""
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        raw = f.read()
    if raw[0] or raw[1] or raw[2] != 8:
        raise SystemExit(f"glow_torch.py: {path}: not an IDX file of bytes")
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    a = np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(dims)
    if rows is not None:
        a = a[:rows]
    a = a.reshape(a.shape[0], 1, a.shape[-2], a.shape[-1])
    return torch.from_numpy(a.astype(np.float32))


def splitmix_shuffle(d, seed=0):
    """plugins/common.h common_shuffle: Fisher-Yates from splitmix64."""
    mask = (1 << 64) - 1
    s = seed
    p = list(range(d))
    for i in range(d, 1, -1):
        s = (s + 0x9E3779B97F4A7C15) & mask
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        j = z % i
        p[i - 1], p[j] = p[j], p[i - 1]
    return p


# ---------------------------------------------------------------- layers
# Each layer maps (x, logdet) in the density direction and back.

class Dequantize(torch.nn.Module):
    def forward(self, x, ld):
        u = torch.rand_like(x) if self.training else 0.5
        return (x + u) / LEVELS, ld - x[0].numel() * math.log(LEVELS)

    def inverse(self, y):
        return LEVELS * y - 0.5


class Logit(torch.nn.Module):
    def forward(self, x, ld):
        k = 1 - 2 * ALPHA
        s = ALPHA + k * x
        ls, l1s = torch.log(s), torch.log1p(-s)
        return ls - l1s, ld + (math.log(k) - ls - l1s).flatten(1).sum(1)

    def inverse(self, z):
        return (torch.sigmoid(z) - ALPHA) / (1 - 2 * ALPHA)


class Squeeze(torch.nn.Module):
    def forward(self, x, ld):
        n, c, h, w = x.shape
        x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(n, c * 4, h // 2, w // 2), ld

    def inverse(self, z):
        n, c, h, w = z.shape
        z = z.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(n, c // 4, h * 2, w * 2)


class ActNorm(torch.nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(c))
        self.shift = torch.nn.Parameter(torch.zeros(c))
        self.eps = eps

    @torch.no_grad()
    def data_init(self, x):
        mean = x.mean(dim=(0, 2, 3))
        sd = x.var(dim=(0, 2, 3), unbiased=False).sqrt() + self.eps
        self.log_scale.copy_(-torch.log(sd))
        self.shift.copy_(-mean / sd)

    def forward(self, x, ld):
        z = x * self.log_scale.exp().view(1, -1, 1, 1) \
            + self.shift.view(1, -1, 1, 1)
        return z, ld + x.shape[2] * x.shape[3] * self.log_scale.sum()

    def inverse(self, z):
        return (z - self.shift.view(1, -1, 1, 1)) \
            * (-self.log_scale).exp().view(1, -1, 1, 1)


class Conv1x1(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        n = c * (c - 1) // 2
        self.lower = torch.nn.Parameter(torch.zeros(n))
        self.upper = torch.nn.Parameter(torch.zeros(n))
        self.log_diag = torch.nn.Parameter(torch.zeros(c))
        self.bias = torch.nn.Parameter(torch.zeros(c))
        self.register_buffer("perm", torch.tensor(splitmix_shuffle(c)))
        self.register_buffer("li", torch.tril_indices(c, c, -1))
        self.register_buffer("ui", torch.triu_indices(c, c, 1))

    def weight(self):
        c = self.c
        L = torch.eye(c).index_put((self.li[0], self.li[1]), self.lower)
        U = torch.diag(self.log_diag.exp()).index_put(
            (self.ui[0], self.ui[1]), self.upper)
        return (L @ U)[self.perm]           # W[i, :] = (L U)[perm[i], :]

    def forward(self, x, ld):
        z = F.conv2d(x, self.weight().view(self.c, self.c, 1, 1), self.bias)
        return z, ld + x.shape[2] * x.shape[3] * self.log_diag.sum()

    def inverse(self, z):
        wi = torch.inverse(self.weight())
        return F.conv2d(z - self.bias.view(1, -1, 1, 1),
                        wi.view(self.c, self.c, 1, 1))


class Coupling(torch.nn.Module):
    """scale "sigmoid": Glow's sigmoid(s + 2) with flowkit's floor,
    m + (1 - m) sigmoid(s + shift); "exp": flowkit's plain affine,
    exp(5 tanh(s / 5)) (for the parity check of a checkpoint exported
    with that transformer)."""

    def __init__(self, c, scale="sigmoid"):
        super().__init__()
        self.scale = scale
        self.shift, self.min = SIGMOID_SHIFT, SIGMOID_MIN
        self.cc = c // 2
        ct = c - self.cc
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(self.cc, HIDDEN, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(HIDDEN, HIDDEN, 1), torch.nn.ReLU(),
            torch.nn.Conv2d(HIDDEN, 2 * ct, 3, padding=1))
        torch.nn.init.zeros_(self.net[4].weight)
        torch.nn.init.zeros_(self.net[4].bias)

    def params(self, xc):
        th = self.net(xc)
        n, _, h, w = th.shape
        th = th.view(n, -1, 2, h, w)          # channel 2c + p
        s, t = th[:, :, 0], th[:, :, 1]
        if self.scale == "sigmoid":
            return torch.log(self.min + (1 - self.min)
                             * torch.sigmoid(s + self.shift)), t
        return 5.0 * torch.tanh(s / 5.0), t

    def forward(self, x, ld):
        xc, xt = x[:, :self.cc], x[:, self.cc:]
        ls, t = self.params(xc)
        return (torch.cat([xc, xt * ls.exp() + t], 1),
                ld + ls.flatten(1).sum(1))

    def inverse(self, z):
        zc, zt = z[:, :self.cc], z[:, self.cc:]
        ls, t = self.params(zc)
        return torch.cat([zc, (zt - t) * (-ls).exp()], 1)


class Exit(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k


def normal_logp(z):
    return -0.5 * (z * z).flatten(1).sum(1) - 0.5 * z[0].numel() * LOG2PI


class Glow(torch.nn.Module):
    """specs/glow_fashion.flow, nodes in flowkit's index order."""

    def __init__(self):
        super().__init__()
        nodes = [Dequantize(), Logit(), Squeeze()]
        for _ in range(4):
            nodes += [ActNorm(4), Conv1x1(4), Coupling(4)]
        nodes += [Exit(2), Squeeze()]
        for _ in range(4):
            nodes += [ActNorm(8), Conv1x1(8), Coupling(8)]
        self.nodes = torch.nn.ModuleList(nodes)

    def log_prob(self, x, init=False):
        ld = torch.zeros(x.shape[0])
        logp = torch.zeros(x.shape[0])
        for nd in self.nodes:
            if isinstance(nd, Exit):
                logp = logp + normal_logp(x[:, :nd.k])
                x = x[:, nd.k:]
                continue
            if init and isinstance(nd, ActNorm):
                nd.data_init(x)
            x, ld = nd(x, ld)
        return logp + normal_logp(x) + ld

    @torch.no_grad()
    def sample(self, n):
        z = torch.randn(n, 8, 7, 7)
        exits = [torch.randn(n, nd.k, 14, 14) for nd in self.nodes
                 if isinstance(nd, Exit)]
        for nd in reversed(self.nodes):
            if isinstance(nd, Exit):
                z = torch.cat([exits.pop(), z], 1)
            else:
                z = nd.inverse(z)
        return z


def bits_per_dim(logp, d):
    """`flowkit eval`'s discrete bits/dim: -log p / (D ln 2), log p
    including the dequantization's -D log 256 (docs/language.md)."""
    return -logp / (d * math.log(2))


@torch.no_grad()
def evaluate(model, x, batch=500):
    model.eval()
    out = [model.log_prob(x[i:i + batch]) for i in range(0, len(x), batch)]
    return torch.cat(out)


def cmd_bpd(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x = read_idx(a.train)
    test = read_idx(a.test, a.test_rows)
    model = Glow()
    with torch.no_grad():               # flowkit train: first batch, in order
        model.eval()
        model.log_prob(x[:a.batch], init=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999),
                           eps=1e-8)
    n = x.shape[0]
    perm, pos = torch.randperm(n), 0
    t0 = time.perf_counter()
    loss = float("nan")
    for _ in range(a.steps):
        if pos + a.batch > n:
            perm, pos = torch.randperm(n), 0
        idx = perm[pos:pos + a.batch]
        pos += a.batch
        model.train()
        lossv = -model.log_prob(x[idx]).mean()
        opt.zero_grad(set_to_none=True)
        lossv.backward()
        opt.step()
        loss = lossv.item()
        if a.log:
            print(f"step {_ + 1} loss {loss:.4f}", file=sys.stderr)
    train_s = time.perf_counter() - t0
    lp = evaluate(model, test)
    d = test[0].numel()
    print(json.dumps({
        "mode": "bpd", "side": "torch", "seed": a.seed, "steps": a.steps,
        "batch": a.batch, "threads": torch.get_num_threads(),
        "train_seconds": train_s, "last_loss": loss,
        "test_rows": len(test), "test_loglik": lp.mean().item(),
        "test_bits_per_dim": bits_per_dim(lp.mean().item(), d),
        "params": sum(p.numel() for p in model.parameters()),
        "peak_rss_kib":
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def load_export(model, path):
    """Weights of `flowkit export` (docs/export.md) into the model; checks
    that the node types agree index by index."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(os.path.dirname(here), "tests",
                                    "python"))
    import safetensors_reader as S
    tensors, meta = S.load(path)
    arch = json.loads(meta["architecture"])
    kinds = {n["index"]: n["type"] for n in arch["layers"]}
    layer = {n["index"]: n for n in arch["layers"]}
    kinds.update({e["index"]: "exit" for e in arch["exits"]})
    want = {Dequantize: "dequantize", Logit: "logit", Squeeze: "squeeze",
            ActNorm: "actnorm", Conv1x1: "conv1x1", Coupling: "coupling",
            Exit: "exit"}
    if len(kinds) != len(model.nodes):
        raise SystemExit(f"{path}: {len(kinds)} nodes, the reference has "
                         f"{len(model.nodes)}")
    T = lambda k: torch.from_numpy(  # noqa: E731
        np.asarray(tensors[k], dtype=np.float32))
    with torch.no_grad():
        for i, nd in enumerate(model.nodes):
            if kinds[i] != want[type(nd)]:
                raise SystemExit(f"{path}: node {i} is {kinds[i]}, the "
                                 f"reference has {want[type(nd)]}")
            p = f"layers.{i}."
            if isinstance(nd, ActNorm):
                nd.log_scale.copy_(T(p + "log_scale"))
                nd.shift.copy_(T(p + "shift"))
            elif isinstance(nd, Conv1x1):
                lo, up = T(p + "lower"), T(p + "upper")
                nd.lower.copy_(lo[nd.li[0], nd.li[1]])
                nd.upper.copy_(up[nd.ui[0], nd.ui[1]])
                nd.log_diag.copy_(T(p + "log_diag"))
                nd.bias.copy_(T(p + "bias"))
                nd.perm.copy_(torch.from_numpy(
                    np.asarray(tensors[p + "perm"], dtype=np.int64)))
                err = (nd.weight() - T(p + "weight")).abs().max().item()
                if err > 1e-4:
                    raise SystemExit(f"{path}: node {i}: P L U differs from "
                                     f"the exported weight by {err:g}")
            elif isinstance(nd, Coupling):
                tf = layer[i]["transformer"]
                if tf["kind"] == "affine_sigmoid":
                    nd.scale = "sigmoid"
                    nd.shift, nd.min = tf["shift"], tf["min_scale"]
                elif tf["kind"] == "affine" and tf["clamp"] == 5:
                    nd.scale = "exp"
                else:
                    raise SystemExit(f"{path}: node {i}: transformer "
                                     f"{tf} is not the reference's")
                for k, m in ((0, 0), (1, 2), (2, 4)):
                    nd.net[m].weight.copy_(T(f"{p}net.{k}.weight"))
                    nd.net[m].bias.copy_(T(f"{p}net.{k}.bias"))
    return arch


def cmd_parity(a):
    torch.set_num_threads(a.threads)
    model = Glow()
    load_export(model, a.export)
    x = read_idx(a.data, a.rows)
    ref = np.loadtxt(a.logprob, delimiter=",", skiprows=1, ndmin=1)
    ref = torch.from_numpy(ref[:len(x)].astype(np.float64))
    lp = evaluate(model, x).double()
    diff = (lp - ref).abs()
    d = x[0].numel()
    print(json.dumps({
        "mode": "parity", "rows": len(x),
        "max_abs_diff_nats": diff.max().item(),
        "max_rel_diff": (diff / ref.abs()).max().item(),
        "max_abs_diff_bits_per_dim": diff.max().item() / (d * math.log(2)),
        "flowkit_mean_loglik": ref.mean().item(),
        "torch_mean_loglik": lp.mean().item()}))
    if not diff.max().item() <= a.tol * max(1.0, ref.abs().max().item()):
        raise SystemExit(f"glow_torch.py: parity: max |diff| "
                         f"{diff.max().item():g} nats exceeds "
                         f"{a.tol:g} x max(1, |log p|)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bpd", help="train, then test bits/dim")
    b.add_argument("--train", required=True)
    b.add_argument("--test", required=True)
    b.add_argument("--steps", type=int, default=300)
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--test-rows", type=int)
    b.add_argument("--log", action="store_true",
                   help="each step's loss on stderr")
    p = sub.add_parser("parity", help="log-densities against flowkit's")
    p.add_argument("export")
    p.add_argument("--data", required=True)
    p.add_argument("--logprob", required=True,
                   help="CSV of `flowkit logprob` on the same --data")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tol", type=float, default=1e-5,
                   help="relative tolerance on log p (default 1e-5, float32)")
    a = ap.parse_args()
    if a.cmd == "bpd":
        cmd_bpd(a)
    else:
        cmd_parity(a)


if __name__ == "__main__":
    main()
