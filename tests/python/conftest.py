"""Shared fixtures of the Python tests: real daemons from $PS_BIN_DIR on
loopback (ps.launch.Cluster: bounded waits, every process killed and reaped
at the end of the test), logs under $PS_TEST_TMP/python/<test>/."""

import os
import re
import shutil
import threading

import pytest

import ps
from ps.launch import Cluster

# Every deadline a test sets is stretched by this (the sanitizer build).
SCALE = float(os.environ.get("PS_TEST_TIME_SCALE", "1"))


def log_dir(request):
    root = os.environ.get("PS_TEST_TMP", "/tmp/ps-test-tmp")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    d = os.path.join(root, "python", name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        p = os.path.join(d, f)
        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
    return d


@pytest.fixture
def cluster(request):
    """cluster(servers=1, workers=1, mode="bsp", ...) -> a started Cluster;
    all of them stopped after the test."""
    made = []

    def make(servers=1, workers=1, mode="bsp", **kw):
        d = log_dir(request)
        if made:
            d = os.path.join(d, str(len(made)))
            os.makedirs(d, exist_ok=True)
        c = Cluster(servers, workers, mode, log_dir=d,
                    start_timeout_s=20 * SCALE, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def run_workers(n, fn, timeout_s=120.0):
    """Runs fn(rank) on n threads (one client each: the GIL is released
    while calls wait, so they progress together) and returns their results;
    re-raises the first failure; fails past the deadline."""
    results, errors = [None] * n, []

    def body(r):
        try:
            results[r] = fn(r)
        except BaseException as e:  # noqa: B902 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(r,), daemon=True)
               for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * SCALE)
        if t.is_alive():
            pytest.fail(f"a worker thread still ran after {timeout_s} s")
    if errors:
        raise errors[0]
    return results


def small_model(n=1000, lr=0.5, sparse=(), momentum=0.0):
    return ps.Model([ps.Tensor("w", n)], sparse=list(sparse),
                    learning_rate=lr, momentum=momentum)
