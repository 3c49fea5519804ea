# interrupt_child.py - a training run for test_flowkit.py to interrupt
# with SIGINT: prints "training" once the first epoch is done, and when
# train() returns after the interrupt, "interrupted STEP MEAN_LOGP" and
# writes the checkpoint named by argv[1].
import sys

import numpy as np

import flowkit
from common import TINY

x = flowkit.dataset("moons", 1000, seed=1)
said = []


def cb(epoch, loss, valid):
    if not said:
        print("training", flush=True)
        said.append(1)


# a budget no machine finishes before the signal (100,000 steps took
# 1.6 s here, so a parent held off the CPU that long saw no interrupt)
m = flowkit.train(TINY, x, steps=10**9, callback=cb, output=sys.argv[1])
if not m.interrupted:
    print("not interrupted")
    sys.exit(1)
print("interrupted", m.step,
      float(np.mean(m.log_prob(x))))
