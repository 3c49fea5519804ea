# flowref.py - a pure-numpy reference of the bundled layers' density
# direction, evaluating log p(x) (and log p(x | c)) from a `flowkit export`.
"""Reference log-densities of an exported flowkit model, in numpy only.

Layer types: coupling (affine with exp or sigmoid scale, additive,
spline; MLP or convolutional conditioner), maf and iaf (MADE),
permute, squeeze, actnorm (per dimension or per channel), batchnorm,
linear, conv1x1, logit, dequantize, residual; multi-scale exits;
bases normal, logistic, diag_normal, mixture.

The input is the .safetensors file written by `flowkit export` and
nothing else (read by safetensors_reader, its "architecture" metadata
describing the layers).  Everything is computed in float64 from the
stored parameters, so that the comparison with `flowkit logprob` measures
flowkit's own rounding.

Conventions (docs/export.md, EXPORT_CONTRACT): layers are listed in
density order, data x -> latent z; each layer returns z and the
per-row log|det dz/dx|; log p(x) = log p_base(z) + sum of the layers'
log-determinants (change of variables, Dinh et al. 2017, eq. 3).

Usage:
    model = load("model.safetensors")
    logp = model.log_prob(x)             # x: (n, D)
    logp = model.log_prob(x, context=c)  # conditional models, c: (n, K)
"""

import json
import math

import numpy as np

import safetensors_reader

LOG_2PI = math.log(2 * math.pi)

# Affine transformer: the log scale is C tanh(s / C) (runtime/transform.c,
# TF_AFFINE_CLAMP; plugins/common.h "scale = exp(5 tanh(s / 5))").
AFFINE_CLAMP = 5.0


class ExportError(ValueError):
    """An export this reference cannot evaluate (names what is missing)."""


# ----------------------------------------------------------- networks

def softplus(z):
    """log(1 + e^z) without overflow."""
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def activation(name, z, param=None):
    """The hidden activations of runtime/nn_impl.h (act_eval)."""
    if name == "relu":
        return np.where(np.signbit(z), 0.0, z)
    if name == "leaky_relu":
        slope = 0.01 if not param else float(param)
        return np.where(np.signbit(z), slope * z, z)
    if name == "tanh":
        return np.tanh(z)
    if name == "elu":                     # alpha = 1
        return np.where(z <= 0, np.expm1(np.minimum(z, 0)), z)
    if name == "softplus":
        return softplus(z)
    if name == "sigmoid":
        return sigmoid(z)
    if name in ("identity", "none", "linear"):
        return z
    raise ExportError("unknown activation %r" % name)


def activation_deriv(name, z, param=None):
    """f'(z) of activation(); relu's f'(+0) = 1, f'(-0) = 0 as act_eval."""
    if name == "relu":
        return np.where(np.signbit(z), 0.0, 1.0)
    if name == "leaky_relu":
        slope = 0.01 if not param else float(param)
        return np.where(np.signbit(z), slope, 1.0)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "elu":
        return np.where(z <= 0, np.exp(np.minimum(z, 0)), 1.0)
    if name == "softplus":
        return sigmoid(z)
    if name == "sigmoid":
        sg = sigmoid(z)
        return sg * (1 - sg)
    if name in ("identity", "none", "linear"):
        return np.ones_like(z)
    raise ExportError("unknown activation %r" % name)


class Net:
    """An MLP or a MADE conditioner: h_{k+1} = act(W_k h_k + b_k), with no
    activation after the last map (torch.nn.Linear's convention: W is
    [out, in]).  A MADE (Germain et al. 2015, eqs. 13-14) is the same
    computation with masked weights: the export stores them with the
    masked entries already zero, and the mask, which is applied again here
    so that the autoregressive property holds by construction."""

    def __init__(self, tensors, prefix, spec):
        self.spec = spec or {}
        self.act = self.spec.get("activation", "relu")
        self.act_param = self.spec.get("act_param")
        if self.spec.get("time", "none") != "none":
            raise ExportError("%s: time-dependent networks (ode layers) are "
                              "not implemented in this reference" % prefix)
        self.W, self.b = [], []
        k = 0
        while prefix + "%d.weight" % k in tensors:
            w = tensors[prefix + "%d.weight" % k].astype(np.float64)
            mname = prefix + "%d.mask" % k
            if mname in tensors:
                m = tensors[mname]
                if m.shape != w.shape:
                    raise ExportError("%s has shape %s, its weight %s"
                                      % (mname, m.shape, w.shape))
                w = np.where(m != 0, w, 0.0)
            bname = prefix + "%d.bias" % k
            if bname not in tensors:
                raise ExportError("missing tensor %s" % bname)
            self.W.append(w)
            self.b.append(tensors[bname].astype(np.float64))
            k += 1
        if not self.W:
            raise ExportError("no tensor %s0.weight" % prefix)
        for k in range(1, len(self.W)):
            if self.W[k].shape[1] != self.W[k - 1].shape[0]:
                raise ExportError("%s%d.weight: %d inputs after %d outputs"
                                  % (prefix, k, self.W[k].shape[1],
                                     self.W[k - 1].shape[0]))
        self.n_in = self.W[0].shape[1]
        self.n_out = self.W[-1].shape[0]

    def __call__(self, h, context=None):
        """h (n, d_in); context (n, K) goes after the data inputs."""
        if context is not None and context.shape[1]:
            h = np.concatenate([h, context], axis=1)
        if h.shape[1] != self.n_in:
            raise ExportError("network takes %d inputs, given %d"
                              % (self.n_in, h.shape[1]))
        last = len(self.W) - 1
        for k, (w, b) in enumerate(zip(self.W, self.b)):
            h = h @ w.T + b
            if k < last:
                h = activation(self.act, h, self.act_param)
        return h

    def jacobian(self, h, context=None, d=None):
        """dy/dh (n, out, d) by the chain rule over the first d inputs
        (the data inputs; the context is held fixed)."""
        d = h.shape[1] if d is None else d
        if context is not None and context.shape[1]:
            h = np.concatenate([h, context], axis=1)
        J = np.broadcast_to(self.W[0][:, :d], (h.shape[0],) +
                            self.W[0][:, :d].shape)
        last = len(self.W) - 1
        for k, (w, b) in enumerate(zip(self.W, self.b)):
            u = h @ w.T + b
            if k > 0:
                J = np.einsum("oi,nid->nod", w, J)
            if k < last:
                J = activation_deriv(self.act, u, self.act_param)[:, :, None] \
                    * J
                h = activation(self.act, u, self.act_param)
        return J


class ConvNet:
    """The host's convolutional conditioner (runtime/conv.c; docs/export.md
    3.1, "kind": "conv"): maps k = 0 .. layers-1 of torch.nn.Conv2d's
    convention (weight [out, in, k, k], stride 1, zero padding k // 2),
    ReLU after every map but the last, the middle maps h + relu(conv(h))
    with "residual"; each row is an image [channels, height, width] in C
    order, the K context values appended as K constant planes."""

    def __init__(self, tensors, prefix, spec):
        self.spec = spec
        if spec.get("activation", "relu") != "relu":
            raise ExportError("%s: conv nets use relu" % prefix)
        self.c, self.h, self.w = (int(spec["channels"]), int(spec["height"]),
                                  int(spec["width"]))
        self.residual = bool(spec.get("residual", False))
        self.W, self.b = [], []
        k = 0
        while prefix + "%d.weight" % k in tensors:
            self.W.append(tensors[prefix + "%d.weight" % k].astype(
                np.float64))
            self.b.append(_get(tensors, prefix + "%d.bias" % k).astype(
                np.float64))
            k += 1
        if len(self.W) < 2:
            raise ExportError("%s: a conv net has at least 2 maps" % prefix)
        self.n_out = self.W[-1].shape[0] * self.h * self.w

    @staticmethod
    def conv2d(x, w, b):
        """Same-padded cross-correlation, out[n, o, y, x] = b[o] + sum_{c,
        i, j} w[o, c, i, j] xpad[n, c, y + i, x + j] (x: (n, c, H, W))."""
        k = w.shape[2]
        p = k // 2
        H, W = x.shape[2], x.shape[3]
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        out = np.zeros((x.shape[0], w.shape[0], H, W)) + b[None, :, None,
                                                           None]
        for i in range(k):
            for j in range(k):
                out += np.einsum("oc,nchw->nohw", w[:, :, i, j],
                                 xp[:, :, i:i + H, j:j + W])
        return out

    def __call__(self, h, context=None):
        """h (n, channels * height * width) -> (n, out_channels * H * W)."""
        n = h.shape[0]
        x = h.reshape(n, self.c, self.h, self.w)
        if context is not None and context.shape[1]:
            planes = np.broadcast_to(context[:, :, None, None],
                                     context.shape + (self.h, self.w))
            x = np.concatenate([x, planes], axis=1)
        if x.shape[1] != self.W[0].shape[1]:
            raise ExportError("conv net takes %d channels, given %d"
                              % (self.W[0].shape[1], x.shape[1]))
        last = len(self.W) - 1
        x = np.maximum(self.conv2d(x, self.W[0], self.b[0]), 0.0)
        for k in range(1, last):
            r = np.maximum(self.conv2d(x, self.W[k], self.b[k]), 0.0)
            x = x + r if self.residual else r
        return self.conv2d(x, self.W[last], self.b[last]).reshape(n, -1)


def make_net(tensors, prefix, spec):
    if (spec or {}).get("kind") == "conv":
        return ConvNet(tensors, prefix, spec)
    return Net(tensors, prefix, spec)


# ------------------------------------------------------- transformers

class Affine:
    """y = x exp(l) + t, l = C tanh(s / C) with C = 5: RealNVP's affine
    coupling (Dinh et al. 2017, eqs. 6-7, log-det eq. 8 = sum of l) and
    MAF's transformer (Papamakarios et al. 2017, eqs. 3-5, written in the
    direction x -> z), with the log scale softly clamped to (-C, C)
    (runtime/transform.c, affine_scale).  Parameters per scalar: (s, t)."""

    n_params = 2

    def __init__(self, spec):
        self.clamp = float(spec.get("clamp", AFFINE_CLAMP))

    def forward(self, x, theta):
        s, t = theta[..., 0], theta[..., 1]
        log_scale = self.clamp * np.tanh(s / self.clamp)
        return x * np.exp(log_scale) + t, log_scale

    def inverse(self, y, theta):
        """x = (y - t) exp(-l), log dx/dy = -l."""
        s, t = theta[..., 0], theta[..., 1]
        log_scale = self.clamp * np.tanh(s / self.clamp)
        return (y - t) * np.exp(-log_scale), -log_scale


class AffineSigmoid:
    """y = x scale + t, scale = m + (1 - m) sigma(s + shift) with shift = 2
    and m = min_scale = e^-5: Glow's affine coupling (Kingma & Dhariwal
    2018, the official code's scale = sigmoid(h + 2.)) with a floor on
    the contraction, and the shift t added after scaling as RealNVP does
    (an equivalent reparametrisation of t).  log tau' = log scale; sigma
    from e = exp(-|a|) (no overflow).  Parameters per scalar: (s, t)."""

    n_params = 2

    def __init__(self, spec):
        self.shift = float(spec.get("shift", 2.0))
        self.min_scale = float(spec["min_scale"])

    def _scale(self, s):
        a = s + self.shift
        e = np.exp(-np.abs(a))
        sig = np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        sc = self.min_scale + (1.0 - self.min_scale) * sig
        return sc, np.log(sc)

    def forward(self, x, theta):
        sig, log_sig = self._scale(theta[..., 0])
        return x * sig + theta[..., 1], log_sig

    def inverse(self, y, theta):
        """x = (y - t) / sigma(a), log dx/dy = -log sigma(a)."""
        sig, log_sig = self._scale(theta[..., 0])
        return (y - theta[..., 1]) / sig, -log_sig


class Additive:
    """y = x + t (NICE, Dinh et al. 2015, eq. 4): volume preserving."""

    n_params = 1

    def __init__(self, spec):
        pass

    def forward(self, x, theta):
        return x + theta[..., 0], np.zeros_like(x)

    def inverse(self, y, theta):
        return y - theta[..., 0], np.zeros_like(y)


class Spline:
    """Monotone rational-quadratic spline on [-B, B], identity outside
    (linear tails): Durkan et al. 2019, sec. 3.1 and appendix A.

    Parameters per scalar, in order: K width logits, K height logits, K-1
    interior derivative parameters.  As runtime/transform.c (make_knots):
      widths  w_k = 2B (min_w + (1 - K min_w) softmax(width logits)_k),
      heights h_k = 2B (min_h + (1 - K min_h) softmax(height logits)_k),
      knots   x_0 = -B, x_{k+1} = x_k + w_k, and x_K = B exactly (same y),
      interior derivatives d_k = min_d + softplus(u_k + log(expm1(1 -
      min_d))) (so u = 0 gives d = 1), the two boundary derivatives 1 so
      that the spline meets the identity tails with slope 1.
    In bin k with s = h_k / w_k and xi = (x - x_k) / w_k (eq. 4):
      y = y_k + h_k (s xi^2 + d_k xi (1 - xi)) / (s + (d_{k+1} + d_k - 2s)
          xi (1 - xi)),
    and its derivative (eq. 5):
      dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) /
              (s + (d_{k+1} + d_k - 2s) xi (1 - xi))^2.
    The bin of x is the largest k < K with x_k <= x; inputs in [-B, B]
    (both ends included) go through the spline."""

    def __init__(self, spec):
        self.bins = int(spec.get("bins", 8))
        self.bound = float(spec.get("bound", 3.0))
        self.min_w = float(spec.get("min_bin_width", spec.get("min_width",
                                                                1e-3)))
        self.min_h = float(spec.get("min_bin_height",
                                    spec.get("min_height", 1e-3)))
        self.min_d = float(spec.get("min_derivative",
                                    spec.get("min_deriv", 1e-3)))
        self.n_params = 3 * self.bins - 1
        self.shift = float(spec.get("derivative_shift",
                                    math.log(math.expm1(1 - self.min_d))))

    @staticmethod
    def _softmax(v):
        e = np.exp(v - v.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def knots(self, theta):
        K, B = self.bins, self.bound
        pw = self._softmax(theta[..., :K])
        ph = self._softmax(theta[..., K:2 * K])
        w = 2 * B * (self.min_w + (1 - K * self.min_w) * pw)
        h = 2 * B * (self.min_h + (1 - K * self.min_h) * ph)
        lead = np.full(theta.shape[:-1] + (1,), -B)
        xk = np.concatenate([lead, -B + np.cumsum(w, axis=-1)], axis=-1)
        yk = np.concatenate([lead, -B + np.cumsum(h, axis=-1)], axis=-1)
        xk[..., K] = B
        yk[..., K] = B
        inner = self.min_d + softplus(theta[..., 2 * K:] + self.shift)
        one = np.ones(theta.shape[:-1] + (1,))
        d = np.concatenate([one, inner, one], axis=-1)
        return xk, yk, d

    def forward(self, x, theta):
        K, B = self.bins, self.bound
        inside = (x >= -B) & (x <= B)
        xk, yk, d = self.knots(theta)
        # largest k < K with xk[k] <= x
        k = np.sum(xk[..., 1:K] <= x[..., None], axis=-1)
        k = np.clip(k, 0, K - 1)[..., None]
        X = np.take_along_axis(xk, k, -1)[..., 0]
        W = np.take_along_axis(xk, k + 1, -1)[..., 0] - X
        Y = np.take_along_axis(yk, k, -1)[..., 0]
        H = np.take_along_axis(yk, k + 1, -1)[..., 0] - Y
        d0 = np.take_along_axis(d, k, -1)[..., 0]
        d1 = np.take_along_axis(d, k + 1, -1)[..., 0]
        xi = np.clip((x - X) / W, 0.0, 1.0)
        s = H / W
        om = xi * (1 - xi)
        den = s + (d0 + d1 - 2 * s) * om
        y = Y + H * (s * xi * xi + d0 * om) / den
        num = d1 * xi * xi + 2 * s * om + d0 * (1 - xi) ** 2
        lad = np.log(s * s * num / (den * den))
        return np.where(inside, y, x), np.where(inside, lad, 0.0)

    def inverse(self, y, theta):
        """x with forward(x) = y, and log dx/dy: in the bin of the y-side
        knots that holds y, xi is the root in [0, 1] of a xi^2 + b xi + c
        = 0 (Durkan et al. 2019, appendix A.3), taken in the stable form
        2c / (-b - sqrt(b^2 - 4ac))."""
        K, B = self.bins, self.bound
        inside = (y >= -B) & (y <= B)
        xk, yk, d = self.knots(theta)
        k = np.sum(yk[..., 1:K] <= y[..., None], axis=-1)
        k = np.clip(k, 0, K - 1)[..., None]
        X = np.take_along_axis(xk, k, -1)[..., 0]
        W = np.take_along_axis(xk, k + 1, -1)[..., 0] - X
        Y = np.take_along_axis(yk, k, -1)[..., 0]
        H = np.take_along_axis(yk, k + 1, -1)[..., 0] - Y
        d0 = np.take_along_axis(d, k, -1)[..., 0]
        d1 = np.take_along_axis(d, k + 1, -1)[..., 0]
        s = H / W
        dy = y - Y
        e = d0 + d1 - 2 * s
        a = H * (s - d0) + dy * e
        b = H * d0 - dy * e
        c = -s * dy
        disc = np.maximum(b * b - 4 * a * c, 0.0)
        den = -b - np.sqrt(disc)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = np.where(den != 0, 2 * c / den, 0.0)
        x = X + np.clip(xi, 0.0, 1.0) * W
        _, lad = self.forward(np.where(inside, x, 0.0), theta)
        return np.where(inside, x, y), np.where(inside, -lad, 0.0)


TRANSFORMERS = {"affine": Affine, "affine_sigmoid": AffineSigmoid,
                "additive": Additive, "spline": Spline}


def make_transformer(spec):
    if isinstance(spec, str):
        spec = {"kind": spec}
    kind = spec.get("kind")
    if kind not in TRANSFORMERS:
        raise ExportError("unknown transformer %r" % kind)
    return TRANSFORMERS[kind](spec)


# ------------------------------------------------------------- layers

def _get(tensors, name):
    if name not in tensors:
        raise ExportError("missing tensor %s" % name)
    return tensors[name]


class Coupling:
    """A coupling layer (RealNVP, Dinh et al. 2017, eqs. 6-8; NSF, Durkan
    et al. 2019, sec. 3.1): the conditioning dimensions (mask 1) pass
    through and feed the network (with the context after them); the
    others go through the transformer, whose parameters for the j-th
    transformed dimension (in increasing index) are output columns j*P ..
    j*P + P - 1.  With a conv net (image masks, docs/export.md 5.1) the
    net reads the conditioning channels ("net_input": "conditioning") or
    the whole image with the transformed positions zeroed
    ("masked_image"), and output channel c*P + p holds parameter p of
    (transformed, resp. image) channel c at every pixel."""

    def __init__(self, tensors, prefix, desc):
        mask = _get(tensors, prefix + "mask").astype(bool)
        self.mask = mask
        self.cond = np.flatnonzero(mask)
        self.tr = np.flatnonzero(~mask)
        self.tf = make_transformer(desc.get("transformer", "affine"))
        self.net = make_net(tensors, prefix + "net.", desc.get("net"))
        self.conv = isinstance(self.net, ConvNet)
        self.masked = desc.get("net_input") == "masked_image"
        P = self.tf.n_params
        want = len(self.tr) * P
        if self.conv and self.masked:
            want = mask.size * P
        if self.net.n_out != want:
            raise ExportError("%snet: %d outputs for %d transformed "
                              "dimensions x %d parameters" % (
                                  prefix, self.net.n_out, len(self.tr), P))

    def params(self, x, context):
        n, P = x.shape[0], self.tf.n_params
        if not self.conv:
            theta = self.net(x[:, self.cond], context)
            return theta.reshape(n, len(self.tr), P)
        hw = self.net.h * self.net.w
        inp = np.where(self.mask, x, 0.0) if self.masked else x[:, self.cond]
        y = self.net(inp, context)
        # (n, channels, P, pixels) -> one row of P per (channel, pixel)
        y = y.reshape(n, -1, P, hw).transpose(0, 1, 3, 2).reshape(n, -1, P)
        return y[:, self.tr, :] if self.masked else y

    def forward(self, x, context):
        theta = self.params(x, context)
        z = x.copy()
        y, lad = self.tf.forward(x[:, self.tr], theta)
        z[:, self.tr] = y
        return z, lad.sum(axis=1)


class MAF:
    """A masked autoregressive layer in its density direction (MAF,
    Papamakarios et al. 2017, eqs. 3-5): z_i = tau(x_i; theta_i(x_<i))
    with every theta from one MADE pass over x (Germain et al. 2015);
    output columns i*P .. i*P + P - 1 are dimension i's parameters (i the
    dimension's index, whatever the order), log-det = sum of log tau'."""

    def __init__(self, tensors, prefix, desc):
        self.tf = make_transformer(desc.get("transformer", "affine"))
        self.net = Net(tensors, prefix + "net.", desc.get("net"))
        self.order = tensors.get(prefix + "order")
        D = self.net.n_out // self.tf.n_params
        if self.net.n_out != D * self.tf.n_params:
            raise ExportError("%snet: %d outputs, not a multiple of %d"
                              % (prefix, self.net.n_out, self.tf.n_params))
        self.dim = D

    def forward(self, x, context):
        n = x.shape[0]
        theta = self.net(x, context).reshape(n, self.dim, self.tf.n_params)
        z, lad = self.tf.forward(x, theta)
        return z, lad.sum(axis=1)


class IAF(MAF):
    """An inverse autoregressive layer in its density direction: the
    inverse of the map z -> x, x_i = tau(z_i; theta_i(z_<i)) (IAF, Kingma
    et al. 2016, eqs. 9-10), so D sequential passes in generation order:
    step s finds dimension i = the one with order[i] = s from the z
    entries already known (the others cannot influence output i)."""

    def __init__(self, tensors, prefix, desc):
        MAF.__init__(self, tensors, prefix, desc)
        if self.order is None:
            raise ExportError("missing tensor %sorder" % prefix)

    def forward(self, x, context):
        n, D, P = x.shape[0], self.dim, self.tf.n_params
        z = np.zeros_like(x)
        logdet = np.zeros(n)
        for step in range(D):
            i = int(np.flatnonzero(self.order == step)[0])
            theta = self.net(z, context).reshape(n, D, P)[:, i, :]
            z[:, i], lad = self.tf.inverse(x[:, i], theta)
            logdet += lad
        return z, logdet


class Permute:
    """z[j] = x[perm[j]]: volume preserving."""

    def __init__(self, tensors, prefix, desc):
        self.perm = _get(tensors, prefix + "perm").astype(np.int64)

    def forward(self, x, context):
        return x[:, self.perm], np.zeros(x.shape[0])


class ActNorm:
    """z = x exp(s) + t per dimension (Glow, Kingma & Dhariwal 2018, Table
    1, with a log scale s): log-det = sum s.  With "per": "channel" (an
    image [C, H, W] stored flat in C order) one s and t per channel, each
    shared by the channel's H*W values: log-det = H*W sum s."""

    def __init__(self, tensors, prefix, desc):
        self.s = _first(tensors, prefix, ("log_scale", "scale")
                        ).astype(np.float64)
        self.t = _first(tensors, prefix, ("shift", "bias")).astype(np.float64)
        self.per_channel = desc.get("per") == "channel"

    def forward(self, x, context):
        g = x.shape[1] // self.s.size if self.per_channel else 1
        s, t = np.repeat(self.s, g), np.repeat(self.t, g)
        return x * np.exp(s) + t, np.full(x.shape[0], g * self.s.sum())


class BatchNorm:
    """Batch normalisation with its running statistics, as in evaluation
    (RealNVP, Dinh et al. 2017, sec. 3.7; MAF sec. 3.4): z = (x - mean) /
    sqrt(var + eps) exp(log_gamma) + beta, log-det = sum (log_gamma -
    log(var + eps) / 2)."""

    def __init__(self, tensors, prefix, desc):
        get = lambda n: _get(tensors, prefix + n).astype(np.float64)
        self.lg, self.beta = get("log_gamma"), get("beta")
        self.mean, self.var = get("running_mean"), get("running_var")
        self.eps = float(desc["attrs"]["eps"])

    def forward(self, x, context):
        sd = np.sqrt(self.var + self.eps)
        z = (x - self.mean) / sd * np.exp(self.lg) + self.beta
        ld = np.sum(self.lg - 0.5 * np.log(self.var + self.eps))
        return z, np.full(x.shape[0], ld)


class Linear:
    """z = W x + b with W = P L U (Glow, Kingma & Dhariwal 2018, Table 1,
    the LU-decomposed 1x1 convolution): W[i, :] = (L U)[perm[i], :], L
    unit lower triangular, U upper with diagonal exp(log_diag), so log|det
    W| = sum log_diag.  W is computed here from the factors, and checked
    against the exported `weight`."""

    def __init__(self, tensors, prefix, desc):
        get = lambda n: _get(tensors, prefix + n)
        L = get("lower").astype(np.float64)
        U = get("upper").astype(np.float64)
        self.log_diag = get("log_diag").astype(np.float64)
        perm = get("perm").astype(np.int64)
        self.W = (L @ U)[perm, :]
        self.b = get("bias").astype(np.float64)
        w = get("weight").astype(np.float64)
        tol = 1e-5 if get("weight").dtype == np.float32 else 1e-12
        if not np.allclose(self.W, w, rtol=tol, atol=tol):
            raise ExportError("%sweight differs from its factors by %.3g"
                              % (prefix, np.abs(self.W - w).max()))
        if not np.allclose(np.diag(U), np.exp(self.log_diag), rtol=tol):
            raise ExportError("%supper's diagonal is not exp(log_diag)"
                              % prefix)

    def forward(self, x, context):
        return x @ self.W.T + self.b, np.full(x.shape[0],
                                              self.log_diag.sum())


class Conv1x1(Linear):
    """Glow's invertible 1x1 convolution: Linear's C x C map W (and bias)
    at every pixel of an image [C, H, W] stored flat in C order (value
    (c, p) at column c*H*W + p): log-det = H*W sum log_diag."""

    def forward(self, x, context):
        n, c = x.shape[0], self.W.shape[0]
        g = x.shape[1] // c
        h = x.reshape(n, c, g)
        z = np.einsum("ij,njp->nip", self.W, h) + self.b[None, :, None]
        return z.reshape(n, c * g), np.full(n, g * self.log_diag.sum())


class Logit:
    """z = logit(s), s = alpha + (1 - 2 alpha) x (RealNVP sec. 4.1, MAF
    sec. 4.3): log-det = sum (log(1 - 2 alpha) - log s - log(1 - s))."""

    def __init__(self, tensors, prefix, desc):
        self.alpha = float(desc["attrs"]["alpha"])

    def forward(self, x, context):
        k = 1 - 2 * self.alpha
        s = self.alpha + k * x
        z = np.log(s) - np.log1p(-s)
        return z, np.sum(math.log(k) - np.log(s) - np.log1p(-s), axis=1)


class Dequantize:
    """z = (x + 1/2) / L, the evaluation-mode uniform dequantization
    (Theis et al. 2016, sec. 3.1): log-det = -D log L."""

    def __init__(self, tensors, prefix, desc):
        self.levels = float(desc["attrs"]["levels"])

    def forward(self, x, context):
        D = x.shape[1]
        return ((x + 0.5) / self.levels,
                np.full(x.shape[0], -D * math.log(self.levels)))


class Residual:
    """z = x + g([x, c]) (i-ResNet, Behrmann et al. 2019; Residual Flows,
    Chen et al. 2019) with the exact log-det log|det(I + dg/dx)|, the
    Jacobian by the chain rule through the (spectrally normalised, as
    exported) MLP."""

    def __init__(self, tensors, prefix, desc):
        self.net = Net(tensors, prefix + "net.", desc.get("net"))

    def forward(self, x, context):
        D = x.shape[1]
        J = self.net.jacobian(x, context, D)
        _, ld = np.linalg.slogdet(np.eye(D)[None] + J)
        return x + self.net(x, context), ld


def _first(tensors, prefix, names):
    for nm in names:
        if prefix + nm in tensors:
            return tensors[prefix + nm]
    raise ExportError("missing tensor %s{%s}" % (prefix, ",".join(names)))


LAYERS = {"coupling": Coupling, "maf": MAF, "iaf": IAF, "permute": Permute,
          "squeeze": Permute, "conv1x1": Conv1x1,
          "actnorm": ActNorm, "batchnorm": BatchNorm, "linear": Linear,
          "logit": Logit, "dequantize": Dequantize, "residual": Residual}


# --------------------------------------------------------------- bases

def _base_tensor(base, tensors, k, default):
    names = base.get("tensors") or []
    return _get(tensors, names[k] if k < len(names) else default
                ).astype(np.float64)


def base_log_prob(base, z, tensors, prefix="base."):
    """log p_base(z) per row (runtime/base.c, row_logp); the parameters of
    diag_normal and gmm come from the tensors the base names."""
    kind = base.get("kind", "normal") if isinstance(base, dict) else base
    D = z.shape[1]
    if kind == "normal":
        return -0.5 * np.sum(z * z, axis=1) - 0.5 * D * LOG_2PI
    if kind == "logistic":
        # log p = -x - 2 log(1 + e^-x), symmetric, written with |x|
        a = np.abs(z)
        return np.sum(-a - 2 * np.log1p(np.exp(-a)), axis=1)
    if kind == "diag_normal":
        mu = _base_tensor(base, tensors, 0, prefix + "mean")
        ls = _base_tensor(base, tensors, 1, prefix + "log_std")
        u = (z - mu) * np.exp(-ls)
        return np.sum(-0.5 * u * u - ls, axis=1) - 0.5 * D * LOG_2PI
    if kind in ("mixture", "gmm"):
        # log sum_k pi_k N(z; mu_k, diag sigma_k^2), pi = softmax(logits)
        lg = _base_tensor(base, tensors, 0, prefix + "logits")
        mu = _base_tensor(base, tensors, 1, prefix + "means")
        ls = _base_tensor(base, tensors, 2, prefix + "log_stds")
        lw = lg - lg.max()
        lw = lw - np.log(np.sum(np.exp(lw)))
        u = (z[:, None, :] - mu[None]) * np.exp(-ls)[None]
        lk = lw[None] + np.sum(-0.5 * u * u - ls[None], axis=2) \
            - 0.5 * D * LOG_2PI
        mx = lk.max(axis=1, keepdims=True)
        return mx[:, 0] + np.log(np.sum(np.exp(lk - mx), axis=1))
    raise ExportError("base %r is not implemented in this reference" % kind)


# --------------------------------------------------------------- model

class Model:
    def __init__(self, tensors, meta):
        if meta.get("format") != "flowkit.export":
            raise ExportError("not a flowkit export (format %r)"
                              % meta.get("format"))
        if meta.get("format_version") != "1":
            raise ExportError("export format_version %r, this reference "
                              "reads 1" % meta.get("format_version"))
        if "architecture" not in meta:
            raise ExportError("no 'architecture' metadata")
        self.arch = json.loads(meta["architecture"])
        self.meta = meta
        self.tensors = tensors
        self.dim = int(self.arch["dim"])
        self.context_dim = int(self.arch.get("context_dim", 0))
        # layers and exits share one index space (graph nodes): an exit
        # after node i-1 factors out the first `dims` dimensions of the
        # state, which its own base models (docs/language.md, `exit`)
        self.nodes = []
        for ex in self.arch.get("exits") or []:
            self.nodes.append((int(ex["index"]), "exit", ex))
        for desc in self.arch["layers"]:
            self.nodes.append((int(desc["index"]), "layer", desc))
        self.nodes.sort(key=lambda n: n[0])
        self.steps = []
        for index, what, desc in self.nodes:
            if what == "exit":
                self.steps.append(("exit", desc))
                continue
            kind = desc["type"]
            if kind not in LAYERS:
                raise ExportError("layer %d: type %r is not implemented in "
                                  "this reference" % (desc["index"], kind))
            if desc.get("portable") is False:
                raise ExportError("layer %d (%s) is marked not portable"
                                  % (desc["index"], desc.get("name")))
            prefix = "layers.%d." % desc["index"]
            layer = LAYERS[kind](tensors, prefix, desc)
            # the context feeds only the layers given it
            layer.given = int(desc.get("context", self.context_dim)) > 0
            self.steps.append(("layer", layer))
        self.base = self.arch.get("base", {"kind": "normal"})

    def log_prob(self, x, context=None):
        """log p(x) (log p(x | c) given context), nats, one per row."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ExportError("data of shape %s, the model takes %d columns"
                              % (x.shape, self.dim))
        if self.context_dim:
            if context is None:
                raise ExportError("the model needs %d context columns"
                                  % self.context_dim)
            context = np.asarray(context, dtype=np.float64)
            if context.shape != (x.shape[0], self.context_dim):
                raise ExportError("context of shape %s, expected (%d, %d)"
                                  % (context.shape, x.shape[0],
                                     self.context_dim))
        else:
            context = None
        logp = np.zeros(x.shape[0])
        z = x
        for what, step in self.steps:
            if what == "exit":
                k = int(step["dims"])
                logp += base_log_prob(step["base"], z[:, :k], self.tensors,
                                      "exits.%d." % step["index"])
                z = z[:, k:]
                continue
            z, ld = step.forward(z, context if step.given else None)
            logp += ld
        return logp + base_log_prob(self.base, z, self.tensors)


def load(path):
    tensors, meta = safetensors_reader.load(path)
    return Model(tensors, meta)


if __name__ == "__main__":
    import sys
    if len(sys.argv) < 3:
        sys.stderr.write("usage: flowref.py MODEL.safetensors DATA.csv "
                         "[CONTEXT-COLUMNS]\n")
        sys.exit(2)
    m = load(sys.argv[1])
    data = np.genfromtxt(sys.argv[2], delimiter=",", names=True)
    cols = data.dtype.names
    ctx_names = sys.argv[3].split(",") if len(sys.argv) > 3 else []
    xs = [c for c in cols if c not in ctx_names][:m.dim]
    x = np.stack([data[c] for c in xs], axis=1)
    c = np.stack([data[c] for c in ctx_names], axis=1) if ctx_names else None
    for v in m.log_prob(x, c):
        print("%.17g" % v)
