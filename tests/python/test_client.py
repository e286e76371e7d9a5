"""ps.Client, every call against a real scheduler and server: results that
could be wrong (exact weights after a known push), and the refusals."""

import array
import os
import threading
import time

import numpy as np
import pytest

import ps
from conftest import SCALE, run_workers, small_model

KEYS = 1000
LR = 0.5  # a power of two and small integer gradients: every w is exact


def grad():
    return (np.arange(KEYS) % 7 - 3).astype(np.float32)


@pytest.fixture
def one(cluster):
    """A 1-server, 1-worker cluster and its connected client."""
    c = cluster(1, 1)
    cl = ps.Client(scheduler=c.endpoint, model=small_model(KEYS, LR),
                   timeout_ms=int(20000 * SCALE),
                   connect_timeout_ms=int(20000 * SCALE))
    yield cl
    if not cl.closed:
        cl.close()


def test_connect_rank_view(one):
    assert one.rank == 0 and one.num_workers == 1 and one.node_id > 0
    assert one.start_clock() == 0
    v = one.view()
    assert v.epoch >= 1 and v.live_workers == 1
    assert len(v.ranges) == 1
    r = v.ranges[0]
    assert (r.begin, r.end) == (0, KEYS) and r.server > 0
    assert one.tensors == (("w", 0, KEYS),) and one.total == KEYS
    assert not one.shutting_down()
    assert one.duplicate_acks == 0


def test_push_pull_by_key_and_name(one):
    g = grad()
    one.push(0, g, 0)
    w = np.zeros(KEYS, np.float32)
    one.pull(0, w, 1)
    np.testing.assert_array_equal(w, -LR * g)
    w2 = np.full(KEYS, 7, np.float32)
    one.pull("w", w2, 1)
    np.testing.assert_array_equal(w2, -LR * g)
    # A slice of the key space, into a slice of an array (a view: the
    # values land in the base array's memory).
    big = np.zeros(KEYS + 10, np.float32)
    one.pull(100, big[5:205], 1)
    np.testing.assert_array_equal(big[5:205], -LR * g[100:300])
    assert not big[:5].any() and not big[205:].any()


def test_buffer_kinds(one):
    """memoryview/array.array and PyTorch CPU tensors go through the same
    path as NumPy arrays."""
    g = array.array("f", grad().tolist())
    one.push("w", g, 0)
    out = array.array("f", [0.0] * KEYS)
    one.pull("w", memoryview(out), 1)
    np.testing.assert_array_equal(np.frombuffer(out, np.float32),
                                  -LR * grad())
    torch = pytest.importorskip("torch")
    t = torch.zeros(KEYS, requires_grad=True)
    one.pull("w", t, 1)  # into the tensor's own storage
    np.testing.assert_array_equal(t.detach().numpy(), -LR * grad())


def test_started_calls(one):
    g = grad()
    w = np.zeros(KEYS, np.float32)
    push = one.push_start("w", g, 0)
    pull = one.pull_start("w", w, 1)  # sees the push (same connection)
    assert push.pending and pull.pending
    push.wait()
    one.wait(pull)
    assert not push.pending and not pull.pending
    np.testing.assert_array_equal(w, -LR * g)
    with pytest.raises(ValueError, match="waited for already"):
        push.wait()
    # Many in flight at once, waited in another order than started.
    outs = [np.zeros(100, np.float32) for _ in range(10)]
    calls = [one.pull_start(100 * i, outs[i], 1) for i in range(10)]
    for c in reversed(calls):
        c.wait()
    np.testing.assert_array_equal(np.concatenate(outs), -LR * g)


def test_started_call_keeps_buffer_alive(one):
    call = one.pull_start("w", np.zeros(KEYS, np.float32), 0)
    call.wait()  # the array had no other reference: the call held it


def test_sparse(cluster):
    c = cluster(1, 1)
    m = small_model(KEYS, LR, sparse=[ps.SparseTable("emb", 4)])
    with ps.Client(scheduler=c.endpoint, model=m) as cl:
        assert cl.tables == (("emb", 4),)
        ids = np.array([5, 1 << 40, 3], np.int64)
        rows = np.full((3, 4), 9, np.float32)
        cl.sparse_pull("emb", ids, rows)
        assert not rows.any()  # zero init
        g = np.arange(12, dtype=np.float32).reshape(3, 4)
        cl.sparse_push("emb", ids.astype(np.uint64), g, 0)
        out = np.zeros((2, 4), np.float32)
        cl.sparse_pull("emb", np.array([3, 5], np.uint64), out)
        assert not out.any()  # BSP: summed until step 0 is applied
        cl.push("w", np.zeros(KEYS, np.float32), 0)  # completes step 0
        cl.pull("w", np.zeros(KEYS, np.float32), 1)
        cl.sparse_pull("emb", np.array([3, 5], np.uint64), out)
        np.testing.assert_array_equal(out, -LR * g[[2, 0]])


def test_refusals(one):
    g = grad()
    with pytest.raises(TypeError, match="float32.*format 'd'"):
        one.push("w", g.astype(np.float64), 0)
    with pytest.raises(TypeError, match="buffer protocol"):
        one.push("w", list(g), 0)
    with pytest.raises(ValueError, match="not C-contiguous"):
        one.push(0, np.zeros(2 * KEYS, np.float32)[::2], 0)
    with pytest.raises(ValueError, match="tensor 'w' has 1000 values, the "
                       "array 999"):
        one.push("w", g[:999], 0)
    with pytest.raises(ValueError, match="past the model's 1000 keys"):
        one.pull(999, np.zeros(2, np.float32), 0)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros(KEYS, np.float32)
        ro.flags.writeable = False
        one.pull("w", ro, 0)
    with pytest.raises(ps.Error) as e:
        one.push("nope", g, 0)
    assert e.value.code == ps.ERR_UNKNOWN_KEY and e.value.name == \
        "ERR_UNKNOWN_KEY" and "no tensor named 'nope'" in e.value.message
    with pytest.raises(ValueError, match="clock"):
        one.push("w", g, -1)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="float32"):
        one.push("w", torch.zeros(KEYS, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="not C-contiguous"):
        one.pull(0, torch.zeros(KEYS, 2)[:, 0], 0)


def test_sparse_refusals(cluster):
    c = cluster(1, 1)
    m = small_model(KEYS, LR, sparse=[ps.SparseTable("emb", 4)])
    with ps.Client(scheduler=c.endpoint, model=m) as cl:
        ids = np.array([1, 2], np.int64)
        with pytest.raises(ps.Error) as e:
            cl.sparse_pull("other", ids, np.zeros((2, 4), np.float32))
        assert e.value.code == ps.ERR_UNKNOWN_KEY
        assert "no sparse table named 'other'" in str(e.value)
        with pytest.raises(ValueError, match="rows of 4 floats: 2 ids need 8"):
            cl.sparse_pull("emb", ids, np.zeros((2, 3), np.float32))
        with pytest.raises(TypeError, match="64-bit integers"):
            cl.sparse_pull("emb", ids.astype(np.int32),
                           np.zeros((2, 4), np.float32))
        with pytest.raises(ValueError, match=r"ids\[1\] is -2"):
            cl.sparse_pull("emb", np.array([1, -2]),
                           np.zeros((2, 4), np.float32))
        # Distinct ids are the library's rule: its refusal, as ps.Error.
        with pytest.raises(ps.Error) as e:
            cl.sparse_push("emb", np.array([1, 1]),
                           np.zeros((2, 4), np.float32), 0)
        assert e.value.code == ps.ERR_INVAL and e.value.message


def test_options_and_model_refusals(cluster):
    c = cluster(1, 1)
    with pytest.raises(TypeError, match="unknown client option 'timeout'.*"
                       "timeout_ms"):
        ps.Client(scheduler=c.endpoint, model=small_model(), timeout=5)
    with pytest.raises(ValueError, match="length 0"):
        ps.Tensor("w", 0)
    with pytest.raises(ValueError, match="optimizer 'lamb'"):
        ps.Model([ps.Tensor("w", 1)], optimizer="lamb")
    with pytest.raises(ValueError, match="name .* 1 to 63 bytes"):
        ps.Client(scheduler=c.endpoint, model=ps.Model([ps.Tensor("x" * 64,
                                                                   1)]))


def test_connect_deadline():
    """No scheduler: ps.Error after connect_timeout_ms, with the code and
    the library's message."""
    t0 = time.monotonic()
    with pytest.raises(ps.Error) as e:
        ps.Client(scheduler="tcp://127.0.0.1:9", model=small_model(),
                  connect_timeout_ms=300)
    assert time.monotonic() - t0 < 10 * SCALE
    assert e.value.code == ps.ERR_TIMEOUT, e.value
    assert "tcp://127.0.0.1:9" in e.value.message
    assert str(e.value).startswith("ERR_TIMEOUT: ")


def test_call_deadline(cluster):
    """A BSP pull for a step nobody pushes waits at the server: the call
    ends at timeout_ms with ERR_TIMEOUT (a client never hangs)."""
    c = cluster(1, 1)
    with ps.Client(scheduler=c.endpoint, model=small_model(KEYS, LR),
                   timeout_ms=int(500 * SCALE)) as cl:
        cl.push("w", grad(), 0)
        w = np.zeros(KEYS, np.float32)
        t0 = time.monotonic()
        with pytest.raises(ps.Error) as e:
            cl.pull("w", w, 5)
        took = time.monotonic() - t0
        assert e.value.code == ps.ERR_TIMEOUT, e.value
        assert 0.4 * SCALE <= took < 10 * SCALE
        call = cl.pull_start("w", w, 5)
        with pytest.raises(ps.Error) as e:
            call.wait()
        assert e.value.code == ps.ERR_TIMEOUT


def test_other_thread_and_closed(one):
    errs = []

    def other():
        try:
            one.pull("w", np.zeros(KEYS, np.float32), 0)
        except RuntimeError as e:
            errs.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert errs and "thread that created it" in errs[0]
    one.done()
    one.close()
    assert one.closed
    with pytest.raises(ValueError, match="closed"):
        one.pull("w", np.zeros(KEYS, np.float32), 0)
    one.close()  # twice is fine


def test_two_workers_barrier_gil(cluster):
    """Two clients on two threads: a BSP step needs both pushes, so one
    thread's waiting pull must not hold the GIL; a third thread counts
    while they wait. The barrier holds until both enter it."""
    c = cluster(2, 2)
    entered = []
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count, daemon=True)
    counter.start()

    def worker(r):
        with ps.Client(scheduler=c.endpoint, model=small_model(KEYS, LR),
                       rank=r, timeout_ms=int(20000 * SCALE)) as cl:
            assert cl.num_workers == 2 and cl.view().live_workers == 2
            if r == 1:
                time.sleep(0.3)  # rank 0 waits in the barrier meanwhile
            before = ticks[0]
            entered.append((r, time.monotonic()))
            cl.barrier("start")
            waited_ticks = ticks[0] - before
            g = grad() * (r + 1)
            cl.push("w", g, 0)
            w = np.zeros(KEYS, np.float32)
            cl.pull("w", w, 1)
            return cl.rank, waited_ticks, w

    out = run_workers(2, worker)
    stop.set()
    assert sorted(r for r, _, _ in out) == [0, 1]
    # Rank 0 waited about 0.3 s in the barrier while the counter ran.
    waited = {r: t for r, t, _ in out}
    assert max(waited.values()) > 20
    # BSP: v = g0/2 + g1/2 = 1.5 g; w = -lr * 1.5 g (exact in float).
    for _, _, w in out:
        np.testing.assert_array_equal(w, -LR * 1.5 * grad())


def test_leave_ends_job(cluster):
    c = cluster(1, 1)
    cl = ps.Client(scheduler=c.endpoint, model=small_model())
    cl.leave("test says stop")
    cl.close()
    rcs = c.wait_daemons(20 * SCALE)
    assert set(rcs) == {"scheduler", "server0"}


def test_done_ends_job(cluster):
    c = cluster(1, 1)
    with ps.Client(scheduler=c.endpoint, model=small_model()) as cl:
        cl.push("w", grad(), 0)
    assert c.wait_daemons(20 * SCALE) == {"scheduler": 0, "server0": 0}


def test_error_codes_exported():
    assert ps.OK == 0 and ps.ERR_TIMEOUT == -4
    assert ps.err_name(ps.ERR_UNKNOWN_KEY) == "ERR_UNKNOWN_KEY"
    assert ps.strerror(ps.ERR_TIMEOUT) == "deadline exceeded"
    assert issubclass(ps.Error, Exception)


def test_curve_keys(cluster, monkeypatch):
    """A cluster keyed as ps.launch keys it (psctl keygen in its folder,
    PS_KEYS_DIR): a client in plaintext gets no service (ps.Error at
    once, ERR_PERMISSION_DENIED: the scheduler speaks another security
    mechanism); one with the worker key, found through $PS_KEYS_DIR,
    pushes and pulls exact weights."""
    c = cluster(1, 1, secure=True)
    assert c.keys_dir is not None
    for role in c.ROLES:
        assert os.path.exists(os.path.join(c.keys_dir, role + ".key"))
    monkeypatch.delenv("PS_KEYS_DIR", raising=False)
    with pytest.raises(ps.Error) as e:
        ps.Client(scheduler=c.endpoint, model=small_model(KEYS, LR),
                  connect_timeout_ms=int(20000 * SCALE))
    assert e.value.code == ps.ERR_PERMISSION_DENIED, e.value
    assert "another security mechanism" in str(e.value), e.value
    monkeypatch.setenv("PS_KEYS_DIR", c.keys_dir)
    with ps.Client(scheduler=c.endpoint, model=small_model(KEYS, LR),
                   timeout_ms=int(20000 * SCALE),
                   connect_timeout_ms=int(20000 * SCALE)) as cl:
        g = grad()
        cl.push("w", g, 0)
        w = np.zeros(KEYS, np.float32)
        cl.pull("w", w, 1)
        np.testing.assert_array_equal(w, -LR * g)
    # The daemons ran with CURVE, as their logs say.
    with open(os.path.join(c.log_dir, "scheduler.log")) as f:
        assert "event=curve " in f.read()


def test_adam_with_warmup_applied_by_the_server(cluster):
    """Issue #14: the optimizer and schedule a ps.Model declares are the
    servers'. Adam's first update is bias-corrected to lr * g / (|g| + eps):
    with a warm-up of 4 steps, step 0 runs at lr / 4, so each weight moves
    by 0.25 * LR against its gradient's sign (0 where g is 0)."""
    c = cluster(1, 1)
    m = ps.Model([ps.Tensor("w", KEYS)], optimizer="adam", learning_rate=LR,
                 beta1=0.9, beta2=0.999, epsilon=1e-8,
                 lr_schedule="constant", lr_warmup_steps=4)
    with ps.Client(scheduler=c.endpoint, model=m,
                   timeout_ms=int(20000 * SCALE),
                   connect_timeout_ms=int(20000 * SCALE)) as cl:
        g = grad()
        cl.push(0, g, 0)
        w = np.zeros(KEYS, np.float32)
        cl.pull(0, w, 1)
        np.testing.assert_allclose(w, -0.25 * LR * np.sign(g), rtol=1e-6,
                                   atol=1e-7)
    with pytest.raises(ValueError, match="lr_schedule"):
        ps.Model([ps.Tensor("w", 4)], lr_schedule="step")


def test_optimizer_per_tensor_and_table(cluster):
    """Issue #14: a tensor or table may declare its own optimizer; the
    model's is the others'. One push of g on one worker: the model's SGD
    moves "a" by -LR g, Adam's bias-corrected first step moves "b" by
    -LR sign(g), "add" makes "c" g exactly, and Adagrad's first step
    (h = g^2) moves every coordinate of a row by -0.25 sign(g)."""
    c = cluster(1, 1)
    m = ps.Model(
        [ps.Tensor("a", KEYS),
         ps.Tensor("b", KEYS, optimizer=ps.Optimizer(
             "adam", learning_rate=LR, beta1=0.9, beta2=0.999, epsilon=1e-8)),
         ps.Tensor("c", KEYS, optimizer=ps.Optimizer("add", learning_rate=0))],
        sparse=[ps.SparseTable("emb", 4, optimizer=ps.Optimizer(
            "adagrad", learning_rate=0.25, epsilon=1e-8))],
        learning_rate=LR)
    with ps.Client(scheduler=c.endpoint, model=m,
                   timeout_ms=int(20000 * SCALE),
                   connect_timeout_ms=int(20000 * SCALE)) as cl:
        g = grad()
        ids = np.array([7, 1 << 33], np.uint64)
        rows_g = np.array([[1, -2, 0, 3], [-4, 5, -6, 0]], np.float32)
        cl.sparse_push("emb", ids, rows_g, 0)
        for name in ("a", "b", "c"):
            cl.push(name, g, 0)
        got = {}
        for name in ("a", "b", "c"):
            got[name] = np.zeros(KEYS, np.float32)
            cl.pull(name, got[name], 1)
        rows = np.zeros((2, 4), np.float32)
        cl.sparse_pull("emb", ids, rows)
    np.testing.assert_array_equal(got["a"], -LR * g)
    np.testing.assert_allclose(got["b"], -LR * np.sign(g), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_array_equal(got["c"], g)
    np.testing.assert_allclose(rows, -0.25 * np.sign(rows_g), rtol=1e-6,
                               atol=1e-7)
    with pytest.raises(TypeError, match="ps.Optimizer"):
        ps.Tensor("x", 4, optimizer="adam")
    with pytest.raises(ValueError, match="optimizer 'lamb'"):
        ps.Optimizer("lamb")
