# test_flowkit.py - the flowkit Python package against the CLI: the same
# checkpoint gives bit-identical log-densities and samples, Python training
# gives the bits of `flowkit train`, save/load/encode/decode round trips,
# conditional models, errors as exceptions, callbacks that stop training,
# KeyboardInterrupt leaving a usable model, compare, and no leak under
# repeated loads.
import json
import math
import os
import signal
import subprocess
import sys
import time
import unittest

import numpy as np

import flowkit
from common import TINY, COND, cli, read_csv, Scratch

REAL = flowkit.dtype
# float32: a round trip through the flow and back moves a value by a few
# ulps per layer of values of size ~2
RT_TOL = 1e-4 if REAL == np.float32 else 1e-10


class CliParity(unittest.TestCase):
    """One checkpoint trained by the CLI, read by both."""

    @classmethod
    def setUpClass(cls):
        s = cls.s = Scratch()
        cls.spec = s.write("tiny.flow", TINY)
        cli("data", "moons", "-n", 1000, "--seed", 1, "-o", s("moons.npy"))
        cli("data", "moons", "-n", 300, "--seed", 2, "-o", s("test.csv"))
        cli("train", cls.spec, "--data", s("moons.npy"), "--steps", 40,
            "--seed", 3, "--quiet", "-o", s("a.ckpt"))
        cli("train", cls.spec, "--data", s("moons.npy"), "--steps", 8,
            "--seed", 4, "--quiet", "-o", s("b.ckpt"))
        cls.x = np.load(s("moons.npy"))
        cls.test = read_csv(s("test.csv")).astype(REAL)

    @classmethod
    def tearDownClass(cls):
        cls.s.cleanup()

    def test_log_prob_bit_identical_to_cli(self):
        s = self.s
        cli("logprob", s("a.ckpt"), "--data", s("test.csv"), "-o",
            s("lp.csv"))
        cli("logprob", s("a.ckpt"), "--data", s("test.csv"), "-o",
            s("lp.npy"))
        with flowkit.load(s("a.ckpt")) as m:
            lp = m.log_prob(self.test)
        self.assertEqual(lp.dtype, REAL)
        self.assertEqual(lp.shape, (300,))
        # the CSV holds %.9g (float32) or %.17g (float64): exact round trip
        from_csv = read_csv(s("lp.csv"))[:, 0].astype(REAL)
        bad = np.flatnonzero(from_csv != lp)
        self.assertEqual(bad.size, 0, "rows %s: cli %r, python %r" % (
            bad[:3], from_csv[bad[:3]], lp[bad[:3]]))
        from_npy = np.load(s("lp.npy")).reshape(-1)
        self.assertTrue(np.array_equal(from_npy, lp))
        self.assertTrue(np.all(np.isfinite(lp)))
        # 40 steps lift the mean log-density well above the untrained
        # model's (-3.78 nats here; -3.11 after training)
        init = flowkit.compile(self.spec).build(seed=3).log_prob(self.test)
        self.assertGreater(float(lp.mean() - init.mean()), 0.3)

    def test_sample_matches_cli_seed(self):
        s = self.s
        cli("sample", s("a.ckpt"), "-n", 500, "--seed", 7, "--with-logprob",
            "-o", s("s.npy"))
        cli_rows = np.load(s("s.npy"))
        m = flowkit.load(s("a.ckpt"))
        x, lp = m.sample(500, seed=7, log_prob=True)
        self.assertEqual(x.shape, (500, 2))
        self.assertTrue(np.array_equal(cli_rows[:, :2], x))
        self.assertTrue(np.array_equal(cli_rows[:, 2], lp))
        # the sample's log-densities are the model's density at them
        self.assertLess(float(np.max(np.abs(m.log_prob(x) - lp))),
                        1e-3 if REAL == np.float32 else 1e-9)
        # seed=None goes on with the stream: different rows
        self.assertFalse(np.array_equal(m.sample(500), x))

    def test_python_training_gives_cli_bits(self):
        s = self.s
        with flowkit.train(self.spec, self.x, steps=40, seed=3) as m:
            self.assertEqual(len(m.history), 5)      # 8 steps per epoch
            self.assertEqual(m.history[-1]["step"], 40)
            ref = flowkit.load(s("a.ckpt"))
            self.assertTrue(np.array_equal(m.parameters, ref.parameters))
            self.assertTrue(np.array_equal(m.log_prob(self.test),
                                           ref.log_prob(self.test)))
            # the spec's train { } gives batch 128: 1000 rows, 8 steps/epoch
            self.assertEqual([h["epoch"] for h in m.history], [1, 2, 3, 4, 5])

    def test_save_load_and_cli_reads_python_checkpoint(self):
        s = self.s
        m = flowkit.train(self.spec, self.x, steps=16, seed=5)
        m.save(s("py.ckpt"))
        self.assertFalse(os.path.exists(s("py.ckpt") + ".tmp"))
        back = flowkit.load(s("py.ckpt"))
        self.assertTrue(np.array_equal(back.log_prob(self.test),
                                       m.log_prob(self.test)))
        _, out, _ = cli("info", s("py.ckpt"), "--json")
        info = json.loads(out)
        self.assertEqual(info["parameters"], m.n_params)
        self.assertEqual(info["step"], "16")
        self.assertEqual(info["epochs_done"], 2)
        mine = back.info()
        self.assertEqual(mine["parameters"], info["parameters"])
        self.assertEqual(mine["epochs_done"], 2)
        self.assertEqual(mine["history"], info["history"])
        self.assertEqual(mine["spec_hash"], info["spec_hash"])
        # the CLI resumes a Python run: 16 more steps from step 16
        cli("train", self.spec, "--data", s("moons.npy"), "--resume",
            s("py.ckpt"), "--steps", 32, "--quiet", "-o", s("py2.ckpt"))
        _, out, _ = cli("info", s("py2.ckpt"), "--json")
        self.assertEqual(json.loads(out)["step"], "32")

    def test_encode_decode_round_trip(self):
        m = flowkit.load(self.s("a.ckpt"))
        z = m.encode(self.test)
        self.assertEqual(z.shape, self.test.shape)
        back = m.decode(z)
        err = float(np.max(np.abs(back - self.test)))
        self.assertLess(err, RT_TOL, "max |decode(encode(x)) - x| = %g" % err)
        # the latent of a trained model is roughly standard normal
        self.assertLess(abs(float(z.mean())), 0.3)
        self.assertLess(abs(float(z.std()) - 1), 0.3)

    def test_inputs_converted_only_when_needed(self):
        m = flowkit.load(self.s("a.ckpt"))
        want = m.log_prob(self.test)
        other = np.float64 if REAL == np.float32 else np.float32
        conv = self.test.astype(other)
        if other == np.float32:     # float64 build: float32 input rounds
            want = m.log_prob(conv.astype(REAL))
        self.assertTrue(np.array_equal(m.log_prob(conv), want))
        fortran = np.asfortranarray(self.test)
        self.assertTrue(np.array_equal(m.log_prob(fortran),
                                       m.log_prob(self.test)))
        # a strided view is copied; BLAS may round a different number of
        # rows differently, so the values agree to rounding only
        self.assertLess(float(np.max(np.abs(
            m.log_prob(self.test[::2]) - m.log_prob(self.test)[::2]))),
            1e-4 if REAL == np.float32 else 1e-10)
        self.assertEqual(m.log_prob(self.test.tolist()).shape, (300,))

    def test_compare_matches_cli(self):
        s = self.s
        _, out, _ = cli("compare", s("a.ckpt"), s("b.ckpt"), "--data",
                        s("test.csv"), "--json")
        ref = json.loads(out)
        res = flowkit.compare([s("a.ckpt"), s("b.ckpt")], self.test)
        self.assertEqual(res["rows"], 300)
        self.assertEqual(res["best"], 0)
        for mine, theirs in zip(res["models"], ref["models"]):
            for k in ("loglik", "stderr", "diff", "diff_stderr",
                      "unpaired_stderr", "z", "p_value", "confidence"):
                if theirs[k] is None:
                    self.assertIsNone(mine[k], k)
                else:
                    self.assertEqual(float("%.9g" % mine[k]), theirs[k],
                                     "%s: %r vs %r" % (k, mine[k], theirs[k]))
        d = res["models"][1]["d"]
        a, b = (flowkit.load(s(f)).log_prob(self.test).astype(float)
                for f in ("a.ckpt", "b.ckpt"))
        self.assertTrue(np.array_equal(d, b - a))
        self.assertTrue(np.all(res["models"][0]["d"] == 0))
        self.assertLess(res["models"][1]["diff"], 0)   # 8 steps is worse


class Temperature(unittest.TestCase):
    """sample(temperature=T): an untrained coupling (zero last layer: the
    identity) over a normal base, so the samples are the latents."""

    SPEC = """flow temp {
    input x : real[3];
    coupling(mask = [1, 0, 1], hidden = [8]);
    output z ~ normal;
}
"""

    def setUp(self):
        self.m = flowkit.compile(self.SPEC, name="temp.flow").build(seed=1)

    def test_half_temperature_halves_the_latent_std(self):
        n = 20000
        x, lp = self.m.sample(n, seed=4, temperature=0.5, log_prob=True)
        z = self.m.encode(x)
        # the standard error of a sample std is sigma / sqrt(2 n) = 0.0025:
        # 5 of them
        sd = z.std(axis=0)
        for j in range(3):
            self.assertAlmostEqual(sd[j], 0.5, delta=5 * 0.5 / np.sqrt(2 * n),
                                   msg="column %d: std %g" % (j, sd[j]))
        # the log-density reported is the model's own (T = 1)
        np.testing.assert_allclose(lp, self.m.log_prob(x), rtol=1e-5,
                                   atol=1e-5)

    def test_temperature_one_is_the_plain_sampler(self):
        a = self.m.sample(100, seed=7)
        b = self.m.sample(100, seed=7, temperature=1.0)
        self.assertTrue(np.array_equal(a, b))

    def test_bad_temperatures_are_refused(self):
        for t in (0.0, -1.0, float("nan"), float("inf")):
            with self.assertRaises(ValueError):
                self.m.sample(10, seed=1, temperature=t)


class Training(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.x = flowkit.dataset("moons", 1000, seed=1)
        cls.spec = flowkit.compile(TINY, name="tiny.flow")

    def test_spec_attributes_and_report(self):
        sp = self.spec
        self.assertEqual((sp.name, sp.dim, sp.context_dim), ("tiny", 2, 0))
        self.assertEqual(sp.train, {"lr": 0.005, "batch": 128})
        self.assertGreater(sp.n_params, 500)
        rep = sp.report()
        self.assertIn("coupling", rep)
        self.assertIn(str(sp.n_params // 2), rep)
        m = sp.build(seed=1)
        self.assertEqual(m.n_params, sp.n_params)

    def test_callback_sees_epochs_and_stops(self):
        seen = []

        def cb(epoch, loss, valid):
            seen.append((epoch, loss, valid))
            return epoch < 3
        m = flowkit.train(self.spec, self.x, epochs=10, valid_fraction=0.2,
                          callback=cb)
        self.assertEqual([e for e, _, _ in seen], [1, 2, 3])
        self.assertEqual(len(m.history), 3)
        for e, loss, v in seen:
            self.assertTrue(math.isfinite(loss) and 1.0 < loss < 4.0, loss)
            self.assertTrue(v is not None and -4.0 < v < -1.0, v)
        self.assertFalse(m.interrupted)
        # 800 training rows at batch 128: 7 steps per epoch
        self.assertEqual(m.history[-1]["step"], 21)

    def test_keyboard_interrupt_returns_usable_model(self):
        def cb(epoch, loss, valid):
            if epoch == 2:
                raise KeyboardInterrupt
        m = flowkit.train(self.spec, self.x, epochs=10, callback=cb)
        self.assertTrue(m.interrupted)
        self.assertEqual(len(m.history), 2)
        lp = m.log_prob(self.x[:100])
        self.assertTrue(np.all(np.isfinite(lp)))
        s = Scratch()
        try:
            m.save(s("int.ckpt"))
            _, out, _ = cli("info", s("int.ckpt"), "--json")
            self.assertEqual(json.loads(out)["step"], "16")
            # resume= goes on from the saved state to the budget's end
            r = flowkit.train(self.spec, self.x, epochs=3,
                              resume=s("int.ckpt"))
            self.assertEqual(r.history[-1]["step"], 24)
            self.assertEqual(len(r.history), 3)
        finally:
            s.cleanup()

    def test_keyboard_interrupt_reraised_on_request(self):
        def cb(epoch, loss, valid):
            raise KeyboardInterrupt
        with self.assertRaises(KeyboardInterrupt) as ctx:
            flowkit.train(self.spec, self.x, epochs=5, callback=cb,
                          reraise=True)
        m = ctx.exception.model
        self.assertTrue(m.interrupted)
        self.assertTrue(np.all(np.isfinite(m.log_prob(self.x[:10]))))

    def test_sigint_to_a_training_process(self):
        child = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "interrupt_child.py")
        s = Scratch()
        try:
            p = subprocess.Popen([sys.executable, child, s("sig.ckpt")],
                                 stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            self.assertEqual(line.strip(), "training", line)
            time.sleep(0.3)
            p.send_signal(signal.SIGINT)
            out, _ = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, out)
            words = out.split()
            self.assertEqual(words[0], "interrupted", out)
            step = int(words[1])
            self.assertGreater(step, 0)
            self.assertLess(step, 10**9)
            self.assertTrue(math.isfinite(float(words[2])), out)
            back = flowkit.load(s("sig.ckpt"))
            self.assertEqual(back.info()["step"], str(step))
            self.assertTrue(back.info()["history"][-1]["step"] <= step)
        finally:
            s.cleanup()


class Conditional(unittest.TestCase):

    def test_context_models(self):
        x, c = flowkit.dataset("8gaussians", 2000, seed=1, labels=True)
        self.assertEqual((x.shape, c.shape), ((2000, 2), (2000, 8)))
        sp = flowkit.compile(COND, name="cond.flow")
        self.assertEqual(sp.context_dim, 8)
        m = flowkit.train(sp, x, context=c, steps=150, seed=1)
        lp_right = m.log_prob(x, c)
        lp_wrong = m.log_prob(x, np.roll(c, 1, axis=1))
        # the context tells the component: the right label is far likelier
        self.assertGreater(float(lp_right.mean() - lp_wrong.mean()), 2.0)
        # one context row for every sample: the samples of component k
        # lie around its mean (the 8gaussians means are at radius 2
        # (docs/formats.md), here for the label of the first row)
        k = int(np.argmax(c[0]))
        mu = x[c[:, k] == 1].mean(axis=0)
        smp = m.sample(2000, context=c[0], seed=2)
        self.assertLess(float(np.linalg.norm(smp.mean(axis=0) - mu)), 0.3)
        with self.assertRaises(flowkit.ShapeError):
            m.log_prob(x)
        with self.assertRaises(flowkit.ShapeError):
            m.log_prob(x, c[:, :7])
        with self.assertRaises(flowkit.ShapeError):
            m.log_prob(x, c[:10])
        # bit-identical to the CLI on the same rows and context
        s = Scratch()
        try:
            m.save(s("c.ckpt"))
            rows = np.hstack([x[:200], c[:200]]).astype(REAL)
            np.save(s("c.npy"), rows)
            cli("logprob", s("c.ckpt"), "--data", s("c.npy"), "--columns",
                "0,1", "--context", ",".join(str(i) for i in range(2, 10)),
                "-o", s("clp.npy"))
            self.assertTrue(np.array_equal(np.load(s("clp.npy")).reshape(-1),
                                           m.log_prob(x[:200], c[:200])))
        finally:
            s.cleanup()


class Errors(unittest.TestCase):

    def test_spec_error_has_location(self):
        bad = TINY.replace("hidden = [16, 16]", "hiden = [16, 16]")
        with self.assertRaises(flowkit.SpecError) as ctx:
            flowkit.compile(bad, name="bad.flow")
        msg = str(ctx.exception)
        self.assertRegex(msg, r"bad\.flow:4:\d+: error\[F\d{4}\]")
        self.assertIn("hiden", msg)
        d = ctx.exception.diagnostics[0]
        self.assertEqual((d["severity"], d["file"], d["line"]),
                         ("error", "bad.flow", 4))
        self.assertIsInstance(ctx.exception, flowkit.Error)

    def test_spec_file_errors(self):
        s = Scratch()
        try:
            path = s.write("syn.flow", "flow f {\n    input x : real[2]\n}\n")
            with self.assertRaises(flowkit.SpecError) as ctx:
                flowkit.compile(path)
            self.assertIn("syn.flow:", str(ctx.exception))
            with self.assertRaises(flowkit.Error):
                flowkit.compile(s("missing.flow"))
        finally:
            s.cleanup()

    def test_bad_checkpoints(self):
        s = Scratch()
        try:
            with open(s("junk.ckpt"), "wb") as f:
                f.write(b"not a checkpoint at all" * 10)
            with self.assertRaises(flowkit.CheckpointError) as ctx:
                flowkit.load(s("junk.ckpt"))
            self.assertIn("junk.ckpt", str(ctx.exception))
            with self.assertRaises(flowkit.Error) as ctx:
                flowkit.load(s("absent.ckpt"))
            self.assertIn("absent.ckpt", str(ctx.exception))
            # a flipped byte fails the checksum
            m = flowkit.compile(TINY).build(seed=1)
            m.save(s("ok.ckpt"))
            with open(s("ok.ckpt"), "rb") as f:
                raw = bytearray(f.read())
            raw[-20] ^= 0xff
            with open(s("flip.ckpt"), "wb") as f:
                f.write(bytes(raw))
            with self.assertRaises(flowkit.CheckpointError):
                flowkit.load(s("flip.ckpt"))
        finally:
            s.cleanup()

    def test_wrong_shapes(self):
        m = flowkit.compile(TINY).build(seed=1)
        for bad in (np.zeros(2), np.zeros((5, 3)), np.zeros((2, 2, 2))):
            with self.assertRaises(flowkit.ShapeError):
                m.log_prob(bad)
        with self.assertRaises(ValueError):     # ShapeError is one
            m.decode(np.zeros((4, 1)))
        with self.assertRaises(flowkit.ShapeError):
            m.log_prob(np.zeros((3, 2)), context=np.zeros((3, 1)))
        with self.assertRaises(flowkit.ShapeError):
            flowkit.train(TINY, np.zeros((10, 3)))
        with self.assertRaises(flowkit.SpecError) as ctx:
            flowkit.train(TINY.replace("batch = 128", "batch = -1"),
                          np.zeros((10, 2)))
        self.assertRegex(str(ctx.exception),
                         r"<string>:7:32: error\[F0601\]: train setting "
                         r"'batch' expects a positive integer")

    def test_closed_model(self):
        m = flowkit.compile(TINY).build(seed=1)
        m.close()
        m.close()
        with self.assertRaises(flowkit.Error):
            m.log_prob(np.zeros((1, 2)))


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Leaks(unittest.TestCase):

    @unittest.skipIf(os.environ.get("FLOWKIT_TEST_ASAN"),
                     "ASan holds freed memory in quarantine: RSS grows "
                     "without a leak")
    def test_repeated_load_does_not_grow(self):
        """500 loads of a 35k-parameter model (its parameters alone are
        140 KB, its compilation more): a leaked model would add 70 MB or
        more; the allowance is 8 MB for the allocator's noise."""
        s = Scratch()
        try:
            spec = flowkit.compile(os.path.join(
                os.environ.get("top_srcdir", "../.."), "specs/moons.flow"))
            spec.build(seed=1).save(s("m.ckpt"))
            x = np.zeros((4, 2), REAL)
            for _ in range(50):                 # warm the allocator
                flowkit.load(s("m.ckpt")).log_prob(x)
            before = rss_bytes()
            for i in range(500):
                m = flowkit.load(s("m.ckpt"))
                m.log_prob(x)
                if i % 2:
                    m.close()                   # and half by the finalizer
                del m
            grown = rss_bytes() - before
            self.assertLess(grown, 8 << 20, "RSS grew by %.1f MB over 500 "
                            "loads" % (grown / 2**20))
        finally:
            s.cleanup()


if __name__ == "__main__":
    unittest.main()
