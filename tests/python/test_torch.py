"""ps.torch against real daemons: the trainer's BSP equivalence with one
process, a server killed mid-run, the sparse Embedding, the refusals, and
the CUDA path (skipped with the reason without a GPU)."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ps
import ps.torch as pst
from ps import fashion_mnist, initializers
from conftest import SCALE, run_workers

LR, MOMENTUM, SEED = 0.02, 0.9, 1
BATCH = 32  # per worker


def mlp():
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


@pytest.fixture(scope="module")
def data():
    xtr, ytr, _, _ = fashion_mnist.load()
    order = np.random.default_rng(7).permutation(len(xtr))
    return torch.from_numpy(xtr), torch.from_numpy(ytr), order


def batch_of(data, step, rank, workers):
    x, y, order = data
    g = order[step * BATCH * workers:(step + 1) * BATCH * workers]
    idx = torch.from_numpy(g[rank * BATCH:(rank + 1) * BATCH])
    return x[idx], y[idx]


def train_workers(cluster_ep, data, steps, workers=2, on_step=None):
    """workers threads, each a trainer of its own MLP, BSP over the global
    batch order; returns each one's final flat weights."""
    def worker(r):
        torch.manual_seed(100 + r)  # the servers' init must win anyway
        net = mlp()
        with pst.ParameterServerTrainer(
                net, scheduler=cluster_ep, learning_rate=LR,
                momentum=MOMENTUM, seed=SEED, rank=r,
                timeout_ms=int(30000 * SCALE)) as tr:
            assert tr.client.rank == r
            for step in range(steps):
                x, y = batch_of(data, step, r, workers)
                tr.step(lambda: F.cross_entropy(net(x), y))
                if on_step is not None and r == 0:
                    on_step(step)
            return tr.weights()
    return run_workers(workers, worker, timeout_s=240)


def reference(data, steps, workers=2):
    """One process, batch workers x 32, the servers' rule applied locally,
    from the servers' initial weights (ps.initializers)."""
    net = mlp()
    model, params = pst.model_spec(net, LR, MOMENTUM, SEED)
    w = initializers.model_weights(model)
    v = np.zeros_like(w)
    x, y, order = data
    for step in range(steps):
        off = 0
        with torch.no_grad():
            for _, p in params:
                p.copy_(torch.from_numpy(w[off:off + p.numel()]).view_as(p))
                off += p.numel()
        net.zero_grad()
        idx = torch.from_numpy(
            order[step * BATCH * workers:(step + 1) * BATCH * workers])
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        g = torch.cat([p.grad.reshape(-1) for _, p in params]).numpy()
        pst.apply_server_rule(w, v, g, LR, MOMENTUM)
    return w


def max_relative(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) /
                 np.max(np.abs(b)))


def test_initial_weights_match_servers(cluster):
    """ps.initializers has the servers' bits: a pull at step 0 equals it."""
    c = cluster(2, 1)
    net = mlp()
    with pst.ParameterServerTrainer(net, scheduler=c.endpoint, seed=SEED) as tr:
        tr.pull()
        want = initializers.model_weights(tr.model)
        np.testing.assert_array_equal(tr.weights(), want)
        # and the module's own tensors hold them (views of the flat block)
        first = next(net.parameters())
        np.testing.assert_array_equal(first.detach().numpy().reshape(-1),
                                      want[:first.numel()])


def test_bsp_two_workers_equal_one_process(cluster, data):
    steps = 100
    c = cluster(2, 2, replication=1)
    w0, w1 = train_workers(c.endpoint, data, steps)
    np.testing.assert_array_equal(w0, w1)
    ref = reference(data, steps)
    rel = max_relative(w0, ref)
    print(f"bsp equivalence: {steps} steps, max |dw| / max |w| = {rel:.3g}")
    assert rel <= 1e-5
    # and training moved the weights (the test could fail)
    init = initializers.model_weights(pst.model_spec(mlp(), LR, MOMENTUM,
                                                     SEED)[0])
    assert max_relative(init, ref) > 1e-2


def test_server_killed_changes_nothing(cluster, data):
    """BSP, 2 servers holding 2 copies of every range: a server SIGKILLed
    mid-run; the weights at the end equal an undisturbed run's."""
    steps = 60
    calm = cluster(2, 2)
    undisturbed = train_workers(calm.endpoint, data, steps)[0]
    assert set(calm.wait_daemons(30 * SCALE).values()) == {0}

    hit = cluster(2, 2)
    killed = []

    def kill_at(step):
        if step == 20 and not killed:
            hit.kill("server1")
            killed.append(step)
    disturbed = train_workers(hit.endpoint, data, steps, on_step=kill_at)
    assert killed == [20]
    np.testing.assert_array_equal(disturbed[0], disturbed[1])
    np.testing.assert_array_equal(disturbed[0], undisturbed)


class TwoTower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = pst.Embedding(8, "items", init="uniform", init_scale=0.1)
        self.out = torch.nn.Linear(8, 1)

    def forward(self, ids):
        return self.out(self.emb(ids).mean(dim=1)).squeeze(1)


def test_embedding_sparse_table(cluster):
    c = cluster(2, 1)
    net = TwoTower()
    with pst.ParameterServerTrainer(net, scheduler=c.endpoint,
                                    learning_rate=0.5, momentum=0.0) as tr:
        assert tr.client.tables == (("items", 8),)
        ids = torch.tensor([[3, 1 << 50, 3], [7, 7, 9]])
        target = torch.tensor([1.0, -1.0])
        before = np.zeros((4, 8), np.float32)
        uniq = torch.tensor([3, 7, 9, 1 << 50])
        tr.client.sparse_pull("items", uniq, before)
        assert np.abs(before).max() > 0  # uniform init, not zeros
        # A step by hand, to see the gradient the trainer pushes.
        tr.pull()
        tr.zero_grad()
        loss = F.mse_loss(net(ids), target)
        loss.backward()
        uniq_seen, rows = net.emb._pending[0]
        grads = {int(i): rows.grad[k].numpy().copy()
                 for k, i in enumerate(uniq_seen)}
        tr.push()
        after = np.zeros((4, 8), np.float32)
        tr.client.sparse_pull("items", uniq, after)
        for k, i in enumerate(uniq.tolist()):
            np.testing.assert_allclose(after[k], before[k] - 0.5 * grads[i],
                                       rtol=0, atol=1e-6)
        # Training lowers the loss.
        first = tr.step(lambda: F.mse_loss(net(ids), target))
        for _ in range(20):
            last = tr.step(lambda: F.mse_loss(net(ids), target))
        assert last < first / 2
    with pytest.raises(TypeError, match="int64"):
        net.emb._trainer = tr
        net.emb(torch.tensor([1, 2], dtype=torch.int32))


def test_server_optimizers(cluster):
    """Issue #14: ps.torch declares the servers' optimizer: Adam for the
    module, plain SGD at 0.5 for the bias (optimizers=). One step from the
    servers' initial weights w0 with gradient g (torch's own, on w0): Adam's
    bias-corrected first step moves the weight by -lr g / (|g| + eps), the
    SGD bias by -0.5 g."""
    c = cluster(1, 1)
    torch.manual_seed(3)
    net = torch.nn.Linear(6, 3)
    x = torch.randn(5, 6)
    y = torch.tensor([0, 2, 1, 1, 0])
    adam = ps.Optimizer("adam", learning_rate=0.01, beta1=0.9, beta2=0.999,
                        epsilon=1e-6)
    with pst.ParameterServerTrainer(
            net, scheduler=c.endpoint, seed=SEED, optimizer=adam,
            optimizers={"bias": ps.Optimizer("sgd", learning_rate=0.5)},
            timeout_ms=int(30000 * SCALE)) as tr:
        w0 = initializers.model_weights(tr.model)
        ref = torch.nn.Linear(6, 3)
        with torch.no_grad():
            ref.weight.copy_(torch.from_numpy(w0[:18]).view(3, 6))
            ref.bias.copy_(torch.from_numpy(w0[18:]))
        F.cross_entropy(ref(x), y).backward()
        tr.step(lambda: F.cross_entropy(net(x), y))
        tr.pull()
        w1 = tr.weights()
    gw = ref.weight.grad.numpy().reshape(-1).astype(np.float64)
    gb = ref.bias.grad.numpy().astype(np.float64)
    np.testing.assert_allclose(w1[:18], w0[:18] - 0.01 * gw / (np.abs(gw) + 1e-6),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w1[18:], w0[18:] - 0.5 * gb, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="no trainable parameter"):
        pst.model_spec(net, optimizers={"nope": adam})
    with pytest.raises(TypeError, match="ps.Optimizer"):
        pst.model_spec(net, optimizer="adam")


def test_trainer_refusals(cluster):
    c = cluster(1, 1)
    with pytest.raises(TypeError, match="float64.*float32"):
        pst.ParameterServerTrainer(torch.nn.Linear(3, 2).double(),
                                   scheduler=c.endpoint)
    with pytest.raises(ValueError, match="no trainable parameters"):
        pst.ParameterServerTrainer(torch.nn.ReLU(), scheduler=c.endpoint)
    with pytest.raises(RuntimeError, match="no ParameterServerTrainer"):
        pst.Embedding(4, "t")(torch.tensor([1]))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no usable CUDA device for PyTorch "
                    f"(torch {torch.__version__}, built with CUDA "
                    f"{torch.version.cuda}): the pinned-buffer path needs one")
def test_cuda_pinned(cluster, data):
    c = cluster(1, 1)
    net = mlp().cuda()
    with pst.ParameterServerTrainer(net, scheduler=c.endpoint,
                                    learning_rate=LR, momentum=MOMENTUM,
                                    seed=SEED) as tr:
        assert tr._host_w.is_pinned() and tr._dev_w.is_cuda
        for step in range(5):
            x, y = batch_of(data, step, 0, 1)
            tr.step(lambda: F.cross_entropy(net(x.cuda()), y.cuda()))
        gpu = tr.weights()
    assert np.isfinite(gpu).all()
