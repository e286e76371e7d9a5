"""ps: Python bindings of libps-client, the parameter server's worker library.

    import numpy as np, ps
    model = ps.Model([ps.Tensor("w", 1000)], learning_rate=0.1)
    with ps.Client(scheduler="tcp://127.0.0.1:7000", model=model) as c:
        g = np.ones(1000, np.float32)
        c.push("w", g, clock=0)              # straight from g's memory
        w = np.empty(1000, np.float32)
        c.pull("w", w, clock=1)              # straight into w's memory

Values must be float32, C-contiguous buffers (NumPy arrays, memoryviews,
PyTorch CPU tensors); nothing is copied on the Python side. Failures of the
library raise ps.Error with .code, .name and .message; calls release the
GIL while they wait, and every call has the client's deadline (timeout_ms).
A client is used from the thread that created it.
"""

import collections
import os

from . import _client
from ._client import Call, Error, err_name, strerror
from ._client import (INIT_UNIFORM, INIT_ZERO, LR_CONSTANT, LR_COSINE,
                      MAX_PENDING, OPTIMIZER_ADAGRAD, OPTIMIZER_ADAM,
                      OPTIMIZER_ADD, OPTIMIZER_FTRL, OPTIMIZER_SGD,
                      SPARSE_DIM_MAX)

# Every status code of <ps/err.h> as ps.OK, ps.ERR_TIMEOUT, ...
for _name in dir(_client):
    if _name == "OK" or _name.startswith("ERR_"):
        globals()[_name] = getattr(_client, _name)
del _name

__all__ = ["Client", "Model", "Tensor", "SparseTable", "Optimizer", "View",
           "Range",
           "Call", "Error", "strerror", "err_name", "INIT_ZERO",
           "INIT_UNIFORM", "OPTIMIZER_SGD", "OPTIMIZER_ADD",
           "OPTIMIZER_ADAGRAD", "OPTIMIZER_ADAM", "OPTIMIZER_FTRL",
           "LR_CONSTANT", "LR_COSINE"]

_INITS = {"zero": INIT_ZERO, "uniform": INIT_UNIFORM}
_OPTIMIZERS = {"sgd": OPTIMIZER_SGD, "add": OPTIMIZER_ADD,
               "adagrad": OPTIMIZER_ADAGRAD, "adam": OPTIMIZER_ADAM,
               "ftrl": OPTIMIZER_FTRL}
_SCHEDULES = {"constant": LR_CONSTANT, "cosine": LR_COSINE}


def _optimizer_code(optimizer):
    if isinstance(optimizer, str):
        if optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer {optimizer!r}: one of {sorted(_OPTIMIZERS)}")
        return _OPTIMIZERS[optimizer]
    return int(optimizer)


class Optimizer:
    """The rule the servers apply to one tensor's or table's pushes, when
    it is not the model's: `kind` "sgd" (momentum), "add", "adagrad"
    (epsilon), "adam" (beta1, beta2, epsilon) or "ftrl" (learning_rate is
    alpha; ftrl_beta, l1, l2); settings the kind does not use must stay 0.
    Its state (momentum, Adagrad's sums, Adam's moments, FTRL's z and n) is
    kept, replicated and checkpointed with the weights."""

    def __init__(self, kind="sgd", learning_rate=0.01, momentum=0.0, *,
                 beta1=0.0, beta2=0.0, epsilon=0.0, l1=0.0, l2=0.0,
                 ftrl_beta=0.0):
        self.kind = _optimizer_code(kind)
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.epsilon = float(epsilon)
        self.l1, self.l2, self.ftrl_beta = float(l1), float(l2), float(ftrl_beta)

    def __repr__(self):
        name = {v: k for k, v in _OPTIMIZERS.items()}.get(self.kind, self.kind)
        return f"ps.Optimizer({name!r}, learning_rate={self.learning_rate})"


def _optimizer_or_none(owner, optimizer):
    if optimizer is None or isinstance(optimizer, Optimizer):
        return optimizer
    raise TypeError(f"{owner}: optimizer must be a ps.Optimizer or None, "
                    f"not {type(optimizer).__name__}")


def _init_code(init):
    if isinstance(init, str):
        if init not in _INITS:
            raise ValueError(f"init {init!r}: one of {sorted(_INITS)}")
        return _INITS[init]
    return int(init)


class Tensor:
    """A dense tensor of the model: `length` float32 keys, initialised by
    the servers (`init` "zero" or "uniform" in (-init_scale, init_scale),
    from the model's seed and the key alone), updated by `optimizer` (a
    ps.Optimizer) or, when None, by the model's."""

    def __init__(self, name, length, init="zero", init_scale=0.0,
                 optimizer=None):
        self.name = str(name)
        self.length = int(length)
        if self.length <= 0:
            raise ValueError(f"tensor {name!r}: length {length} must be > 0")
        self.init = _init_code(init)
        self.init_scale = float(init_scale)
        self.optimizer = _optimizer_or_none(f"tensor {name!r}", optimizer)

    def __repr__(self):
        return (f"ps.Tensor({self.name!r}, {self.length}, init={self.init}, "
                f"init_scale={self.init_scale})")


class SparseTable:
    """A sparse embedding table: uint64 ids -> rows of `dim` float32,
    created on first touch with `init`, updated by `optimizer` (a
    ps.Optimizer, its state kept per row) or, when None, by the model's."""

    def __init__(self, name, dim, init="zero", init_scale=0.0,
                 optimizer=None):
        self.name = str(name)
        self.dim = int(dim)
        if not 1 <= self.dim <= SPARSE_DIM_MAX:
            raise ValueError(
                f"sparse table {name!r}: dim {dim} not in [1, {SPARSE_DIM_MAX}]")
        self.init = _init_code(init)
        self.init_scale = float(init_scale)
        self.optimizer = _optimizer_or_none(f"sparse table {name!r}",
                                            optimizer)

    def __repr__(self):
        return f"ps.SparseTable({self.name!r}, {self.dim}, init={self.init})"


class Model:
    """What a worker declares: dense tensors laid end to end from key 0 in
    this order, sparse tables, and the rule the servers apply to a pushed
    gradient g ("sgd": v = momentum v + g / workers, w -= learning_rate v;
    "add": w += g; "adagrad" (epsilon), "adam" (beta1, beta2, epsilon, with
    bias correction), "ftrl" (learning_rate is alpha; ftrl_beta, l1, l2): see
    common/optimizer.h; settings an optimizer does not use must stay 0) and
    the learning-rate schedule the servers apply at each step t
    ("constant" or "cosine" over lr_total_steps, after lr_warmup_steps of
    linear warm-up). A Tensor or SparseTable may name an optimizer of its
    own (ps.Optimizer); the model's is the default of the others. Every
    worker of a job must declare the same model."""

    def __init__(self, tensors=(), sparse=(), optimizer="sgd",
                 learning_rate=0.01, momentum=0.0, seed=1, *, beta1=0.0,
                 beta2=0.0, epsilon=0.0, l1=0.0, l2=0.0, ftrl_beta=0.0,
                 lr_schedule="constant", lr_total_steps=0, lr_warmup_steps=0):
        self.tensors = list(tensors)
        self.sparse = list(sparse)
        self.optimizer = _optimizer_code(optimizer)
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.seed = int(seed)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.epsilon = float(epsilon)
        self.l1, self.l2, self.ftrl_beta = float(l1), float(l2), float(ftrl_beta)
        if isinstance(lr_schedule, str):
            if lr_schedule not in _SCHEDULES:
                raise ValueError(f"lr_schedule {lr_schedule!r}: one of "
                                 f"{sorted(_SCHEDULES)}")
            lr_schedule = _SCHEDULES[lr_schedule]
        self.lr_schedule = int(lr_schedule)
        self.lr_total_steps = int(lr_total_steps)
        self.lr_warmup_steps = int(lr_warmup_steps)

    @property
    def total(self):
        return sum(t.length for t in self.tensors)

    def offsets(self):
        """{name: (offset, length)} of the dense tensors."""
        out, off = {}, 0
        for t in self.tensors:
            out[t.name] = (off, t.length)
            off += t.length
        return out


Range = collections.namedtuple("Range", "begin end server")
View = collections.namedtuple("View", "epoch live_workers ranges")


class Client(_client.Client):
    """A worker connected to a cluster.

    Client(scheduler="tcp://HOST:PORT", model=ps.Model(...), **options)
    registers with the scheduler (default: $PS_SCHEDULER), declares model
    and waits for the view. Options are ps_client_opts_t's fields:
    timeout_ms, connect_timeout_ms, heartbeat_ms, rank, window,
    chunk_bytes, resend_ms, keys_dir, key_file, join_new_rank (1: grow a
    running job with a new rank, README "Workers join and leave"); an
    unknown one is a TypeError. keys_dir (default $PS_KEYS_DIR) and key_file (default
    $PS_KEY, else KEYS_DIR/worker.key) make every link CURVE, as the C
    programs' --keys-dir and --key; without them the client speaks
    plaintext, which a cluster keyed by its operator refuses.

    Dense calls take `where`: a key (int; the buffer's length is the count)
    or a tensor name (str; the buffer must have exactly its length):
      push(where, values, clock), pull(where, out, clock)
      push_start(...) / pull_start(...) -> Call; call.wait() or wait(call)
    Sparse: sparse_push(table, ids, values, clock), sparse_pull(table, ids,
    out), ids int64/uint64, values len(ids) x dim float32.
    Also barrier(name), done(), leave(reason), view(), rank, num_workers,
    node_id, start_clock(), shutting_down(), close(). As a context manager
    it says done on a normal exit and leave on an exception.
    """

    def __init__(self, scheduler=None, model=None, **options):
        if scheduler is None:
            scheduler = os.environ.get("PS_SCHEDULER")
        if not scheduler:
            raise ValueError("scheduler endpoint not given and PS_SCHEDULER "
                             "not set")
        if model is None:
            raise ValueError("model is required (a ps.Model)")
        for opt, env in (("keys_dir", "PS_KEYS_DIR"), ("key_file", "PS_KEY")):
            if opt not in options and os.environ.get(env):
                options[opt] = os.environ[env]
        super().__init__(scheduler, model, **options)

    def view(self):
        epoch, live, ranges = super().view()
        return View(epoch, live, [Range(*r) for r in ranges])

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.closed:
            if exc_type is None:
                self.done()
            else:
                self.leave(f"{exc_type.__name__}: {exc}"[:200])
            self.close()
        return False
