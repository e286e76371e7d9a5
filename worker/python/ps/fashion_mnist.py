"""Fashion-MNIST from IDX files (gzipped or plain), as worker/data/idx.c
reads them: images as float32 in [0, 1] (then standardised with the
training set's mean and deviation, as ps-worker does), labels as int64."""

import gzip
import os

import numpy as np

DEFAULT_DIR = os.environ.get("PS_DATA_DIR",
                             "/usr/share/datasets/fashion-mnist")


def _open(path):
    if os.path.exists(path):
        return open(path, "rb")
    if os.path.exists(path + ".gz"):
        return gzip.open(path + ".gz", "rb")
    raise FileNotFoundError(f"{path}(.gz) not found")


def read_idx(path):
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
            for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes, header says {dims}")
    return body.reshape(dims)


def load(data_dir=DEFAULT_DIR, normalize=True):
    """(x_train, y_train, x_test, y_test): x float32 (n, 784), y int64."""
    def part(prefix):
        x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte"))
        x = x.reshape(x.shape[0], -1).astype(np.float32) / np.float32(255.0)
        return x, y.astype(np.int64)
    xtr, ytr = part("train")
    xte, yte = part("t10k")
    if normalize:
        mean, std = float(xtr.mean(dtype=np.float64)), \
            float(xtr.std(dtype=np.float64))
        xtr = (xtr - np.float32(mean)) / np.float32(std)
        xte = (xte - np.float32(mean)) / np.float32(std)
    return xtr, ytr, xte, yte
