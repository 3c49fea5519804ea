# test_export_ref.py - `flowkit export` is complete: the numpy reference
# (flowref.py), given only the export, reproduces `flowkit logprob`.
"""For RealNVP (specs/moons.flow), NSF (specs/nsf_8gaussians.flow), MAF
(specs/maf_moons.flow) and a conditional MAF (specs/cond_maf.flow): train
briefly with the CLI, export, and compare log p(x) of a few hundred rows
(for NSF also some far out, in the splines' linear tails) computed by flowkit
and by flowref.py from the export.  The same for the other bundled layer
types: NICE (additive couplings, actnorm, a logistic base), a multi-scale
exit, an 8-D MAF, IAF, residual flows (exact log-det), and a spec written
here with logit, linear (LU), batchnorm and a diag_normal or mixture base.

Run by tests/export_ref.sh with FLOWKIT (the build's flowkit),
FLOW_PLUGIN_PATH and top_srcdir set.

Tolerance: |flowkit - reference| <= tol * max(1, |reference|), with tol =
1e-5 for a float32 build and 1e-9 for float64 (the export's "dtype").
The reference computes in float64 from the stored parameters, so the
difference is flowkit's own rounding.  log p(x) is a sum of terms about
as large as itself (the base's -|z|^2 / 2, the log-determinants), each
computed with a relative error of some units in the last place; so the
error grows with |log p| and the bound is absolute up to |log p| = 1 and
relative beyond (a briefly trained model gives some rows log p of -30
and below).
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flowref  # noqa: E402
import safetensors_reader  # noqa: E402

LABELS = ["label%d" % i for i in range(8)]
TOL = {"F32": 1e-5, "F64": 1e-9}


def flowkit(*args):
    cmd = [os.environ["FLOWKIT"]] + [str(a) for a in args]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if r.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd),
                                                      r.returncode,
                                                      r.stdout, r.stderr))
    return r


def spec(name):
    if os.path.isabs(name):
        return name
    return os.path.join(os.environ.get("top_srcdir", "."), "specs", name)


# The layers no bundled spec combines: a logit on data in (0, 1), the LU
# linear map, batch normalisation (its running statistics), a spline
# coupling, actnorm, and a base with parameters.
EXTRA_SPEC = """flow extra {
    input x : real[3];
    logit();
    linear();
    batchnorm();
    coupling(mask = [1, 0, 1], hidden = [32], activation = tanh,
             transformer = spline(bins = 5, bound = 3));
    actnorm();
    output z ~ %s;
}
"""

# RealNVP's checkerboard couplings with the conv conditioner on its
# masked image, residual middle stages and a spline (P = 11 per scalar)
CHECKER_SPEC = """flow checker {
    input x : real[1, 4, 4] in [0, 255];
    dequantize(levels = 256);
    logit(alpha = 0.05);
    repeat 2 as i {
        actnorm;
        coupling(mask = checkerboard(i), transformer = spline(bins = 4),
                 net = conv(hidden = 8, blocks = 2, residual = true));
    }
    output z ~ normal;
}
"""


# Glow's sigmoid scale in a coupling and a MAF (autoregressive) layer.
SIGMOID_SPEC = """flow sigmoid_affine {
    input x : real[2];
    repeat 2 as i {
        coupling(mask = parity(i), hidden = [32],
                 transformer = affine(scale = sigmoid));
        maf(hidden = [32], transformer = affine(scale = sigmoid));
        permute(order = reverse);
    }
    output z ~ normal;
}
"""


def unit_cube_data(path, n, seed):
    """n rows in (0, 1)^3 with some dependence between the columns."""
    rng = np.random.default_rng(seed)
    u = rng.beta(2, 5, size=(n, 1))
    x = np.clip(np.concatenate([u, 1 - u * 0.8, u * u], axis=1)
                + rng.normal(scale=0.05, size=(n, 3)), 0.01, 0.99)
    np.savetxt(path, x, fmt="%.9g", delimiter=",", header="x0,x1,x2",
               comments="")


def far_rows(k):
    """k rows on rings of radius 4.5 and 6: past the splines' bound of 4
    in the first layer (the linear tails)."""
    a = np.linspace(0, 2 * np.pi, k, endpoint=False)
    r = np.where(np.arange(k) % 2 == 0, 4.5, 6.0)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


class ExportMatchesLogprob(unittest.TestCase):
    results = {}

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name

    @classmethod
    def tearDownClass(cls):
        for name, (prec, n, err, worst, span) in sorted(
                cls.results.items()):
            sys.stderr.write("export_ref: %-9s %s %d rows: max |diff| "
                             "%.3g, max |diff| / max(1, |logp|) %.3g, "
                             "log p in [%.4g, %.4g]\n"
                             % ((name, prec, n, err, worst) + span))
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def check_model(self, name, spec_file, dataset, context=False,
                    far=0, data_args=()):
        train = self.path(name + "_train.csv")
        evalf = self.path(name + "_eval.csv")
        ckpt = self.path(name + ".ckpt")
        export = self.path(name + ".safetensors")
        extra = (["--labels"] if context else []) + list(data_args)
        if callable(dataset):
            dataset(train, 2048, 1)
            dataset(evalf, 300, 2)
        else:
            flowkit("data", dataset, "-n", 2048, "--seed", 1, "-o", train,
                    *extra)
            flowkit("data", dataset, "-n", 300, "--seed", 2, "-o", evalf,
                    *extra)
        ctx = ["--context", ",".join(LABELS)] if context else []
        # 64 steps at a high rate: far enough from the identity start
        # (zero last layers) that every parameter matters
        flowkit("train", spec(spec_file), "--data", train, "--epochs", 1,
                "--batch", 32, "--lr", 5e-3, "--seed", 1, "--quiet",
                "-o", ckpt, *ctx)
        flowkit("export", ckpt, "-o", export)

        tensors, meta = safetensors_reader.load(export)
        prec = meta["dtype"]
        real = np.float32 if prec == "F32" else np.float64
        arch = json.loads(meta["architecture"])
        self.assertEqual(arch["context_dim"], 8 if context else 0)

        # the evaluation rows: the data set's, then `far` far out
        rows = np.genfromtxt(evalf, delimiter=",", names=True)
        xcols = ["x%d" % j for j in range(arch["dim"])]
        x = np.stack([rows[n] for n in xcols], axis=1)
        c = np.stack([rows[n] for n in LABELS], axis=1) if context else None
        if far:
            x = np.concatenate([x, far_rows(far)])
            if context:
                c = np.concatenate([c, np.eye(8)[np.arange(far) % 8]])
        # what flowkit reads: the decimal text rounded to its precision
        x = x.astype(real).astype(np.float64)
        cols = xcols + (LABELS if context else [])
        table = np.concatenate([x, c], axis=1) if context else x
        full = self.path(name + "_rows.csv")
        np.savetxt(full, table, fmt="%.17g", delimiter=",",
                   header=",".join(cols), comments="")
        out = self.path(name + "_lp.npy")
        flowkit("logprob", ckpt, "--data", full, "--format", "npy", "-o",
                out, *ctx)
        got = np.load(out).astype(np.float64).reshape(-1)

        model = flowref.load(export)
        ref = model.log_prob(x, c)
        self.assertEqual(got.shape, ref.shape)
        self.assertTrue(np.all(np.isfinite(ref)), "non-finite reference")

        # the model is far from the identity: the layers' log-dets move
        # log p by more than any tolerance here
        base = flowref.base_log_prob(arch.get("base", "normal"), x, tensors)
        moved = float(np.mean(np.abs(ref - base)))
        self.assertGreater(moved, 0.05, "%s: the trained model is almost "
                           "the identity (mean |sum logdet| %.3g)"
                           % (name, moved))

        diff = np.abs(got - ref)
        scaled = diff / np.maximum(1.0, np.abs(ref))
        worst = int(np.argmax(scaled))
        self.results[name] = (prec, len(ref), float(diff.max()),
                              float(scaled.max()),
                              (float(ref.min()), float(ref.max())))
        self.assertLessEqual(
            scaled[worst], TOL[prec],
            "%s (%s): row %d: flowkit %.17g, reference %.17g, |diff| %.3g "
            "(tolerance %g x max(1, |logp|))" % (
                name, prec, worst, got[worst], ref[worst], diff[worst],
                TOL[prec]))

    def test_realnvp_moons(self):
        self.check_model("realnvp", "moons.flow", "moons")

    def test_nsf_8gaussians(self):
        self.check_model("nsf", "nsf_8gaussians.flow", "8gaussians",
                         far=20)

    def test_maf_moons(self):
        self.check_model("maf", "maf_moons.flow", "moons")

    def test_conditional_maf(self):
        self.check_model("cond_maf", "cond_maf.flow", "8gaussians",
                         context=True)

    # beyond the four: additive couplings, actnorm and a logistic base
    # (NICE), a multi-scale exit, and an 8-dimensional MAF

    def test_nice_actnorm_logistic(self):
        self.check_model("nice", "nice.flow", "8gaussians")

    def test_multiscale_exit(self):
        self.check_model("multiscale", "multiscale.flow", "gmm",
                         data_args=("--dim", 4, "--components", 4))

    def test_iaf(self):
        self.check_model("iaf", "iaf.flow", "moons")

    def test_residual_exact_logdet(self):
        self.check_model("resflow", "resflow_moons.flow", "moons")

    def extra_spec(self, base):
        path = self.path("extra_%s.flow" % base.split("(")[0])
        with open(path, "w") as f:
            f.write(EXTRA_SPEC % base)
        return path

    def test_logit_linear_batchnorm_diag_normal(self):
        self.check_model("lu_bn_diag", self.extra_spec("diag_normal"),
                         unit_cube_data)

    def test_logit_linear_batchnorm_mixture(self):
        self.check_model("lu_bn_gmm", self.extra_spec("mixture(3)"),
                         unit_cube_data)

    def test_image_squeeze_actnorm_per_channel(self):
        self.check_model("image", "image_tiny.flow", "gmm",
                         data_args=("--dim", 32, "--components", 4))

    def test_dequantize_logit(self):
        self.check_model("dequant", "dequant_tiny.flow", "shapes",
                         data_args=("--size", 4))

    def test_affine_sigmoid_scale(self):
        path = self.path("sigmoid_affine.flow")
        with open(path, "w") as f:
            f.write(SIGMOID_SPEC)
        self.check_model("sigmoid", path, "moons")

    def test_glow_conv_coupling(self):
        self.check_model("glow", "glow_tiny.flow", "shapes",
                         data_args=("--size", 8))

    def test_checkerboard_conv_spline(self):
        path = self.path("checker.flow")
        with open(path, "w") as f:
            f.write(CHECKER_SPEC)
        self.check_model("checker", path, "shapes", data_args=("--size", 4))

    def test_maf_8d(self):
        self.check_model("maf_gmm", "maf_gmm.flow", "gmm",
                         data_args=("--dim", 8, "--components", 8))


class ReferenceIsSensitive(unittest.TestCase):
    """The reference's transformers against closed forms, so that an
    agreement with flowkit cannot come from a shared mistake in the
    obvious places."""

    def test_conv2d_is_same_padded_cross_correlation(self):
        # out[n, o, y, x] = b[o] + sum w[o, c, i, j] x[n, c, y+i-p, x+j-p]
        # over the taps inside the image, written out term by term
        rng = np.random.default_rng(4)
        x = rng.normal(size=(2, 3, 4, 5))
        w = rng.normal(size=(2, 3, 3, 3))
        b = rng.normal(size=2)
        got = flowref.ConvNet.conv2d(x, w, b)
        want = np.zeros((2, 2, 4, 5))
        for n in range(2):
            for o in range(2):
                for y in range(4):
                    for xx in range(5):
                        v = b[o]
                        for c in range(3):
                            for i in range(3):
                                for j in range(3):
                                    yy, xj = y + i - 1, xx + j - 1
                                    if 0 <= yy < 4 and 0 <= xj < 5:
                                        v += w[o, c, i, j] * x[n, c, yy, xj]
                        want[n, o, y, xx] = v
        self.assertLess(float(np.abs(got - want).max()), 1e-12)

    def test_spline_at_zero_parameters_is_identity(self):
        sp = flowref.Spline({"bins": 8, "bound": 4.0})
        x = np.linspace(-5, 5, 41)
        y, lad = sp.forward(x, np.zeros((41, sp.n_params)))
        np.testing.assert_allclose(y, x, atol=1e-12)
        np.testing.assert_allclose(lad, 0, atol=1e-12)

    def test_spline_log_derivative_matches_finite_difference(self):
        rng = np.random.default_rng(5)
        sp = flowref.Spline({"bins": 5, "bound": 3.0})
        theta = rng.normal(size=(1, sp.n_params)) * 2
        x = np.linspace(-2.9, 2.9, 57)
        th = np.repeat(theta, len(x), axis=0)
        h = 1e-6
        yp, _ = sp.forward(x + h, th)
        ym, _ = sp.forward(x - h, th)
        _, lad = sp.forward(x, th)
        np.testing.assert_allclose(lad, np.log((yp - ym) / (2 * h)),
                                   atol=1e-6)
        y, _ = sp.forward(np.array([-3.0, 3.0]), th[:2])
        np.testing.assert_allclose(y, [-3.0, 3.0], atol=1e-12)

    def test_spline_inverse_inverts_forward(self):
        rng = np.random.default_rng(7)
        sp = flowref.Spline({"bins": 6, "bound": 2.5})
        x = np.linspace(-3.5, 3.5, 71)
        th = rng.normal(size=(len(x), sp.n_params)) * 1.5
        y, lad = sp.forward(x, th)
        back, ilad = sp.inverse(y, th)
        np.testing.assert_allclose(back, x, atol=1e-10)
        np.testing.assert_allclose(ilad, -lad, atol=1e-9)

    def test_affine_scale_is_clamped(self):
        af = flowref.Affine({})
        y, lad = af.forward(np.array([1.0, 1.0]),
                            np.array([[100.0, 0.0], [0.1, 2.0]]))
        self.assertAlmostEqual(lad[0], 5 * np.tanh(20), places=12)
        self.assertAlmostEqual(y[1], np.exp(5 * np.tanh(0.02)) + 2,
                               places=12)

    def test_affine_sigmoid_closed_form(self):
        """scale = m + (1 - m) / (1 + e^-(s + 2)) by hand, on both sides
        of s = -2 and in the tails (the floor m and 1)."""
        af = flowref.AffineSigmoid({"shift": 2.0, "min_scale": 1e-3})
        s = np.array([-40.0, -3.0, -2.0, 0.0, 1.5, 40.0])
        th = np.stack([s, np.full_like(s, 0.5)], axis=1)
        y, lad = af.forward(np.full_like(s, 2.0), th)
        sc = 1e-3 + (1 - 1e-3) / (1.0 + np.exp(-(s + 2.0)))
        np.testing.assert_allclose(lad, np.log(sc), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(y, 2.0 * sc + 0.5, rtol=1e-12)
        self.assertAlmostEqual(lad[0], np.log(1e-3), places=12)
        back, ilad = af.inverse(y, th)
        np.testing.assert_allclose(back, 2.0, rtol=1e-11)
        np.testing.assert_allclose(ilad, -lad, rtol=1e-12, atol=1e-15)

if __name__ == "__main__":
    unittest.main()
