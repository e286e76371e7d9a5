"""The servers' initializers, in NumPy: the same bits as common/init.c.

A key's initial value depends only on (seed, key), through splitmix64, so a
program can know the weights the servers start from without asking them:
the PyTorch equivalence test starts its one-process reference from them.
"""

import numpy as np

from ._client import INIT_UNIFORM, INIT_ZERO

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x):
    """splitmix64's finaliser (ps_mix64) of a uint64 scalar or array."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def fill(key_begin, count, init, scale, seed):
    """float32 values of keys [key_begin, key_begin + count), as
    ps_init_fill makes them."""
    if init == INIT_ZERO:
        return np.zeros(count, np.float32)
    if init != INIT_UNIFORM:
        raise ValueError(f"unknown init {init}")
    state = mix64(np.uint64(seed))
    keys = np.arange(key_begin, key_begin + count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = mix64(state + (keys + np.uint64(1)) * _GOLDEN)
    m = (z >> np.uint64(40)).astype(np.int64)
    u = (2 * m + 1 - (1 << 24)).astype(np.float32) * np.float32(2.0 ** -24)
    return np.float32(scale) * u


def model_weights(model):
    """The whole dense key space of a ps.Model as the servers start it."""
    out = np.empty(model.total, np.float32)
    off = 0
    for t in model.tensors:
        out[off:off + t.length] = fill(off, t.length, t.init, t.init_scale,
                                       model.seed)
        off += t.length
    return out
