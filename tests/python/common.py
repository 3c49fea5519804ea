# common.py - what the Python package's tests share: the flowkit program,
# a scratch directory, small specs, running the CLI.
import os
import subprocess
import tempfile

import numpy as np

TOP_BUILDDIR = os.environ.get("top_builddir", "")
FLOWKIT = os.environ.get("FLOWKIT") or os.path.join(TOP_BUILDDIR, "flowkit")

# 2 affine couplings (~700 parameters): trains in a fraction of a second
TINY = """flow tiny {
    input x : real[2];
    repeat 2 as i {
        coupling(mask = parity(i), hidden = [16, 16], transformer = affine);
    }
    output z ~ normal;
    train { lr = 5e-3; batch = 128; }
}
"""

# a conditional MAF on 8gaussians with the one-hot component as context
COND = """flow cmaf {
    input x : real[2];
    context c : real[8];
    repeat 2 {
        maf(hidden = [32, 32], transformer = affine) given c;
        permute(order = reverse);
    }
    output z ~ normal;
    train { lr = 5e-3; batch = 128; }
}
"""


def cli(*args, check=True):
    """Runs flowkit with args; (returncode, stdout, stderr)."""
    p = subprocess.run([FLOWKIT] + [str(a) for a in args],
                       capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError("flowkit %s: exit %d\n%s" % (
            " ".join(map(str, args)), p.returncode, p.stderr))
    return p.returncode, p.stdout, p.stderr


def read_csv(path):
    """A CSV that flowkit wrote (header row), as float64 rows."""
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


class Scratch:
    """A temporary directory with files named under it."""

    def __init__(self):
        self._d = tempfile.TemporaryDirectory(prefix="flowkit-py-")
        self.dir = self._d.name

    def __call__(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, text):
        with open(self(name), "w") as f:
            f.write(text)
        return self(name)

    def cleanup(self):
        self._d.cleanup()
