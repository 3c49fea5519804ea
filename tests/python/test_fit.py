# test_fit.py - flowkit.fit: reverse-KL fits to a Python function of a
# numpy batch (a Gaussian with a known mean and log Z), to a named target
# plugin with the bits of `flowkit fit`, and the failures of a Python
# target (an exception raised again, a wrong shape, KeyboardInterrupt).
import json
import math
import unittest

import numpy as np

import flowkit
from common import cli, Scratch

# 2 affine couplings with a permutation: enough for a Gaussian
SPEC = """flow q {
    input x : real[2];
    repeat 2 {
        coupling(mask = half, hidden = [16], transformer = affine);
        permute(order = reverse);
    }
    output z ~ normal;
}
"""
MU = np.array([1.5, -2.0])


def gauss(x):
    """N(MU, I): log p and its gradient, normalised (log Z = 0)."""
    d = x - MU
    lp = -0.5 * np.sum(d * d, axis=1) - math.log(2 * math.pi)
    return lp, -d


class Fit(unittest.TestCase):

    def test_python_target_finds_the_mean(self):
        calls = []

        def target(x):
            calls.append(x.shape)
            return gauss(x)
        m, rep = flowkit.fit(SPEC, target=target, steps=400, lr=1e-2,
                             batch=128, seed=1, log_z=0.0, eval_samples=4000)
        # one call per block of the step's batch: 128 in two of 64
        self.assertEqual(calls[0], (64, 2))
        self.assertGreaterEqual(len(calls), 800)
        x = m.sample(4000, seed=3)
        # ELBO = log Z - KL(q || p) with log Z = 0: the fit's KL is about
        # 0.014 nats, which allows a mean shift of sqrt(2 KL) = 0.17 (the
        # sample mean's own s.e. is 0.016); the untrained flow's mean is
        # 0, 2 away
        self.assertGreater(rep["elbo"], -0.05)
        err = np.abs(x.mean(axis=0) - MU)
        self.assertLess(float(err.max()), 0.25, "mean %s" % x.mean(axis=0))
        self.assertLess(abs(float(x.std(axis=0).mean()) - 1), 0.1)
        self.assertEqual(rep["samples"], 4000)
        self.assertEqual(rep["log_z_true"], 0.0)
        self.assertLess(abs(rep["log_z"]), 4 * rep["log_z_se"] + 0.01,
                        "log Z %g +- %g" % (rep["log_z"], rep["log_z_se"]))
        self.assertGreater(rep["ess_per_sample"], 0.9)
        self.assertEqual(m.history[-1]["step"], 400)
        # saved without a target the CLI could rebuild
        s = Scratch()
        try:
            m.save(s("py.ckpt"))
            self.assertEqual(flowkit.load(s("py.ckpt")).info()["objective"],
                             "reverse_kl")
            self.assertNotIn("target", flowkit.load(s("py.ckpt")).info())
        finally:
            s.cleanup()

    def test_named_target_gives_cli_bits(self):
        s = Scratch()
        try:
            spec = s.write("q.flow", SPEC)
            tgt = "banana(a = 1.5, b = 0.5)"
            # the same bits at any thread count; one on both sides
            cli("fit", spec, "--target", tgt, "--steps", 60, "--seed", 2,
                "--eval-samples", 500, "--threads", 1, "--json", "-o",
                s("cli.ckpt"))
            m, rep = flowkit.fit(spec, target=tgt, steps=60, seed=2,
                                 eval_samples=500, threads=1)
            ref = flowkit.load(s("cli.ckpt"))
            self.assertTrue(np.array_equal(m.parameters, ref.parameters))
            self.assertEqual(m.info()["target"], tgt)
            m.save(s("py.ckpt"))
            _, out, _ = cli("info", s("py.ckpt"), "--json")
            self.assertEqual(json.loads(out)["target"], tgt)
            # `flowkit sample --weights` rebuilds the target from it
            cli("sample", s("py.ckpt"), "-n", 10, "--weights", "-o",
                s("w.csv"))
            self.assertTrue(math.isfinite(rep["elbo"]))
        finally:
            s.cleanup()

    def test_exception_in_target_is_raised_again(self):
        n = [0]

        def target(x):
            n[0] += 1
            if n[0] == 3:
                raise ZeroDivisionError("boom in the posterior")
            return gauss(x)
        with self.assertRaises(ZeroDivisionError) as ctx:
            flowkit.fit(SPEC, target=target, steps=50)
        self.assertIn("boom in the posterior", str(ctx.exception))
        self.assertEqual(n[0], 3)

    def test_wrong_target_shapes(self):
        with self.assertRaises(flowkit.ShapeError) as ctx:
            flowkit.fit(SPEC, target=lambda x: (x[:, 0], x[:, :1]), steps=5)
        self.assertIn("grad has shape", str(ctx.exception))
        with self.assertRaises(TypeError):
            flowkit.fit(SPEC, target=lambda x: x[:, 0], steps=5)
        with self.assertRaises(flowkit.Error):
            flowkit.fit(SPEC, steps=5)          # no target anywhere

    def test_keyboard_interrupt_in_target(self):
        n = [0]

        def target(x):
            n[0] += 1
            if n[0] == 20:
                raise KeyboardInterrupt
            return gauss(x)
        m, rep = flowkit.fit(SPEC, target=target, steps=100)
        self.assertIsNone(rep)
        self.assertTrue(m.interrupted)
        # batches of 256 in two blocks of 128, one call each: the 20th
        # call is step 10's second
        self.assertEqual(m.step, 9)
        self.assertTrue(np.all(np.isfinite(m.sample(10, seed=1))))


if __name__ == "__main__":
    unittest.main()
