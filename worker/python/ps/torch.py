"""PyTorch on the parameter server.

    trainer = ps.torch.ParameterServerTrainer(model, scheduler=...,
                                              learning_rate=0.02,
                                              momentum=0.9)
    for x, y in batches:
        loss = trainer.step(lambda: F.cross_entropy(model(x), y))
    trainer.close()

The trainer declares the module's parameters as the model's dense tensors
(named by named_parameters(), in that order) and its ps.torch.Embedding
layers as sparse tables. Each step it pulls the weights for the step from
the servers into the module's own tensors, runs the closure (forward), calls
backward(), and pushes the gradients, which the servers apply (SGD with
momentum, as the C trainer; in BSP or ASP, as the scheduler says). Nothing
in Python copies a value: the parameters (and their .grad) are views of one
flat float32 block that the library pulls into and pushes from. On a CUDA
module the block lives on the GPU and is staged through pinned host buffers
(one copy each way, the only way to reach host memory).

Initial weights come from the servers (the module's own are overwritten at
the first pull): tensors of 2 or more dimensions uniform in +-sqrt(6 /
(fan_in + fan_out)) (Glorot, as worker/model/mlp.c), others zero, from the
model's seed and the key alone (ps.initializers reproduces them).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

import ps


def default_init(name, param):
    """(init, scale) the servers start a parameter from."""
    if param.dim() >= 2:
        receptive = math.prod(param.shape[2:]) if param.dim() > 2 else 1
        fan_in, fan_out = param.shape[1] * receptive, param.shape[0] * receptive
        return ps.INIT_UNIFORM, math.sqrt(6.0 / (fan_in + fan_out))
    return ps.INIT_ZERO, 0.0


class Embedding(torch.nn.Module):
    """An embedding whose rows live in a sparse table on the servers, for
    tables that do not fit one worker: forward(ids) pulls only the rows of
    the batch's distinct ids, and the trainer pushes their gradients after
    backward. ids are int64 >= 0 of any shape; the output has a trailing
    dimension of embedding_dim. Usable once a ParameterServerTrainer owns
    the module that holds it."""

    def __init__(self, embedding_dim, table, init="uniform", init_scale=0.05,
                 optimizer=None):
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.table = str(table)
        self.spec = ps.SparseTable(self.table, self.embedding_dim, init=init,
                                   init_scale=init_scale, optimizer=optimizer)
        self._trainer = None
        self._pending = []  # (ids, rows) pulled this step

    def forward(self, ids):
        if self._trainer is None:
            raise RuntimeError(f"ps.torch.Embedding '{self.table}': no "
                               "ParameterServerTrainer owns this module yet")
        if ids.dtype != torch.int64:
            raise TypeError(f"ps.torch.Embedding '{self.table}': ids must be "
                            f"int64, got {ids.dtype}")
        uniq, inverse = torch.unique(ids.cpu(), return_inverse=True)
        rows = torch.empty(uniq.numel(), self.embedding_dim,
                           dtype=torch.float32)
        self._trainer.client.sparse_pull(self.table, uniq, rows)
        rows = rows.to(self._trainer.device).requires_grad_(True)
        self._pending.append((uniq, rows))
        return F.embedding(inverse.to(self._trainer.device), rows)

    def _push(self, client, clock):
        for uniq, rows in self._pending:
            if rows.grad is None:
                continue
            g = rows.grad.detach().to("cpu", torch.float32).contiguous()
            client.sparse_push(self.table, uniq, g, clock)
        self._pending.clear()


def model_spec(module, learning_rate=0.01, momentum=0.9, seed=1,
               init=default_init, optimizer=None, optimizers=None):
    """(ps.Model, [(name, parameter)]) a trainer of module declares: its
    trainable parameters as dense tensors in named_parameters() order, its
    ps.torch.Embedding layers as sparse tables. The servers update them
    with optimizer (a ps.Optimizer; None: SGD with learning_rate and
    momentum), and the parameters optimizers names ({name: ps.Optimizer})
    with their own."""
    optimizers = dict(optimizers or {})
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    unknown = sorted(set(optimizers) - {n for n, _ in params})
    if unknown:
        raise ValueError(f"optimizers names no trainable parameter: {unknown}")
    embeddings = [m for m in module.modules() if isinstance(m, Embedding)]
    if not params and not embeddings:
        raise ValueError("the module has no trainable parameters")
    tensors = []
    for name, p in params:
        if p.dtype != torch.float32:
            raise TypeError(f"parameter {name} is {p.dtype}: the servers "
                            "hold float32")
        kind, scale = init(name, p)
        tensors.append(ps.Tensor(name, p.numel(), init=kind,
                                 init_scale=scale,
                                 optimizer=optimizers.get(name)))
    if optimizer is None:
        optimizer = ps.Optimizer("sgd", learning_rate, momentum)
    if not isinstance(optimizer, ps.Optimizer):
        raise TypeError("optimizer must be a ps.Optimizer or None")
    o = optimizer
    model = ps.Model(tensors, [e.spec for e in embeddings],
                     optimizer=o.kind, learning_rate=o.learning_rate,
                     momentum=o.momentum, seed=seed, beta1=o.beta1,
                     beta2=o.beta2, epsilon=o.epsilon, l1=o.l1, l2=o.l2,
                     ftrl_beta=o.ftrl_beta)
    return model, params


class ParameterServerTrainer:
    """Trains a torch.nn.Module through the servers (see the module doc).

    module: float32 parameters, on the CPU or one CUDA device.
    scheduler: "tcp://HOST:PORT" (default $PS_SCHEDULER).
    learning_rate, momentum, seed: the servers' rule (SGD) and
      initialisation; every worker of a job must give the same ones.
    optimizer: a ps.Optimizer the servers apply instead of that SGD
      (Adam, Adagrad, FTRL: their state lives on the servers, replicated
      and checkpointed); optimizers: {parameter name: ps.Optimizer} for
      the parameters that differ from it. An Embedding's table takes its
      own (ps.torch.Embedding(optimizer=...)).
    init: callable (name, parameter) -> (ps.INIT_*, scale); default
      default_init.
    grad_scale: callable (step) -> float, multiplies each step's gradient
      before it is pushed (a schedule of the worker's own; ps-worker's
      cosine is the servers' now, declared in the model: ps.Model's
      lr_schedule).
    Other keywords are ps.Client options (timeout_ms, rank, ...).
    """

    def __init__(self, module, scheduler=None, *, learning_rate=0.01,
                 momentum=0.9, seed=1, init=default_init, grad_scale=None,
                 optimizer=None, optimizers=None, **client_options):
        self.module = module
        self.grad_scale = grad_scale
        self.embeddings = [m for m in module.modules()
                           if isinstance(m, Embedding)]
        self.model, params = model_spec(module, learning_rate, momentum,
                                        seed, init, optimizer, optimizers)
        devices = {p.device for _, p in params}
        if len(devices) > 1:
            raise ValueError(f"parameters on several devices: {devices}")
        self.device = devices.pop() if devices else torch.device("cpu")
        self.params = [p for _, p in params]
        self._bind(params)
        self.client = ps.Client(scheduler=scheduler, model=self.model,
                                **client_options)
        for e in self.embeddings:
            e._trainer = self
        self.clock = self.client.start_clock()
        self._pulled = False

    # The flat blocks. _host_w/_host_g are what the library reads and
    # writes; on the CPU the parameters are views of them, on a GPU of
    # _dev_w/_dev_g, copied to and from pinned _host_* each step.
    def _bind(self, params):
        total = sum(p.numel() for _, p in params)
        cuda = self.device.type == "cuda"
        self._host_w = torch.zeros(max(total, 1), dtype=torch.float32,
                                   pin_memory=cuda)
        self._host_g = torch.zeros_like(self._host_w, pin_memory=cuda)
        if cuda:
            self._dev_w = torch.zeros(max(total, 1), device=self.device)
            self._dev_g = torch.zeros_like(self._dev_w)
        else:
            self._dev_w, self._dev_g = self._host_w, self._host_g
        self.total = total
        self._views = []
        off = 0
        with torch.no_grad():
            for _, p in params:
                n = p.numel()
                w = self._dev_w[off:off + n].view_as(p)
                w.copy_(p)
                p.data = w
                p.grad = self._dev_g[off:off + n].view_as(p)
                self._views.append((p, off, n))
                off += n

    def _gather_grads(self):
        """Makes _dev_g hold every gradient. backward() accumulates into the
        .grad views in place; a .grad someone replaced (set_to_none, an
        optimizer's zero_grad) is copied back and re-bound."""
        for p, off, n in self._views:
            view = self._dev_g[off:off + n]
            g = p.grad
            if g is None:
                view.zero_()
            elif g.data_ptr() != view.data_ptr():
                view.copy_(g.reshape(-1))
            p.grad = view.view_as(p)
            if p.data.data_ptr() != self._dev_w[off:off + n].data_ptr():
                raise RuntimeError("a parameter's .data was replaced after "
                                   "the trainer bound it")

    def pull(self):
        """Pulls the weights for the current step into the module."""
        if self.total:
            self.client.pull(0, self._host_w[:self.total], self.clock)
            self._after_pull()
        self._pulled = True

    def _after_pull(self):
        if self._dev_w is not self._host_w:
            self._dev_w.copy_(self._host_w, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()

    def zero_grad(self):
        self._dev_g.zero_()
        for e in self.embeddings:
            e._pending.clear()

    def push(self):
        """Pushes this step's gradients (after backward()) and, in flight at
        the same time, pulls the weights of the next step."""
        for e in self.embeddings:
            e._push(self.client, self.clock)
        if self.total:
            self._gather_grads()
            if self.grad_scale is not None:
                self._dev_g.mul_(float(self.grad_scale(self.clock)))
            if self._dev_g is not self._host_g:
                self._host_g.copy_(self._dev_g, non_blocking=True)
                torch.cuda.current_stream(self.device).synchronize()
            g = self._host_g[:self.total]
            pushing = self.client.push_start(0, g, self.clock)
            pulling = self.client.pull_start(0, self._host_w[:self.total],
                                             self.clock + 1)
            try:
                pushing.wait()
            except BaseException:
                _wait_quietly(pulling)
                raise
            try:
                pulling.wait()
            except ps.Error as e:
                # When a server dies, the push's frames queued to it are
                # freed by closing the data connections, which fails the
                # calls in flight with ERR_PEER (libps-client's settle).
                # A pull changes nothing on the servers: pull again.
                if e.code != ps.ERR_PEER:
                    raise
                self.client.pull(0, self._host_w[:self.total], self.clock + 1)
            self._after_pull()
        self.clock += 1
        self._pulled = True

    def step(self, closure):
        """One training step: weights for the step in the module, zero
        gradients, loss = closure(), loss.backward(), push. Returns the loss
        as a float."""
        if not self._pulled:
            self.pull()
        self.zero_grad()
        loss = closure()
        loss.backward()
        self.push()
        return float(loss.detach())

    def weights(self):
        """The flat weights as the module holds them (a CPU NumPy copy)."""
        return self._dev_w[:self.total].detach().cpu().numpy().copy()

    def close(self, error=None):
        """Done (or leave, with error's text), then disconnect."""
        if not self.client.closed:
            if error is None:
                self.client.done()
            else:
                self.client.leave(str(error)[:200])
            self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(None if exc_type is None else f"{exc_type.__name__}: {exc}")
        return False


def _wait_quietly(call):
    try:
        call.wait()
    except ps.Error:
        pass


def apply_server_rule(weights, velocity, grad, learning_rate, momentum,
                      scale=1.0):
    """The servers' SGD with momentum (common/optimizer.c) on float32 NumPy
    arrays, in place: v = momentum v + scale g; w -= learning_rate v. For a
    one-process reference of a run through the servers."""
    lr, m, s = (np.float32(learning_rate), np.float32(momentum),
                np.float32(scale))
    if m == 0:
        weights -= (lr * s) * grad
        return
    velocity *= m
    velocity += s * grad
    weights -= lr * velocity
