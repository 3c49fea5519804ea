# flowkit - normalizing flows from Python: a pure-Python package over the
# flowkit C libraries (libflowkit, libflowc) through ctypes.  docs/python.md.
"""Normalizing flows with flowkit, from Python.

    import flowkit
    spec = flowkit.compile("specs/moons.flow")
    x = flowkit.dataset("moons", 2000, seed=1)
    model = flowkit.train(spec, x, steps=200)
    logp = model.log_prob(x)
    samples = model.sample(1000, seed=0)
    model.save("moons.ckpt")
    same = flowkit.load("moons.ckpt")

Arrays go in and out as numpy arrays of ``flowkit.dtype`` (float32, or
float64 in a build configured with --enable-double), rows first and
C-contiguous; other arrays are converted (copied) on the way in.
Errors raise ``flowkit.Error`` and its subclasses with flowkit's message.
See docs/python.md for a walk-through.
"""
from ._lib import (Error, SpecError, CheckpointError, ShapeError,
                   NumericError, DivergedError, PluginError, PRECISION,
                   REAL as dtype, kit as _kit)
from ._core import Spec, Model, compile, load, compare, dataset
from ._train import train, fit

#: "float32" or "float64": the precision the C library computes in
precision = PRECISION
#: the version of the C library this package loaded
__version__ = _kit.flow_version().decode()

__all__ = ["Error", "SpecError", "CheckpointError", "ShapeError",
           "NumericError", "DivergedError", "PluginError", "Spec", "Model",
           "compile", "load", "train", "fit", "compare", "dataset", "dtype",
           "precision"]
