#!/usr/bin/env python3
"""The Python binding's figures, in one pass on one machine:

1. samples/s of the 784-256-128-10 MLP, BSP, 2 servers + 2 workers of batch
   32: PyTorch workers (examples/train_fashion_mnist.py through ps.torch)
   against the C trainer (ps-worker --device cpu), and a single PyTorch
   process of batch 64 (the same global step, no servers);
2. the cost of one blocking push and one blocking pull from Python against
   C, at 4 KiB and 1 MiB: ps.Client's loop against ps-bench's (window 1),
   each against 1 server and 1 client, ASP, no replica; median per call,
   in --rounds alternating rounds (Python, C, Python, C, ...) so that a
   shared machine's load drifting over the run falls on both sides; the
   figure is the median over rounds of each round's difference.

    PYTHONPATH=build/python PS_BIN_DIR=build/bin \\
        python3 tests/bench/python_figures.py [--steps 600]

Every process runs with one compute thread (torch.set_num_threads(1),
OPENBLAS_NUM_THREADS=1), so the two trainers do the same arithmetic on the
same cores.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import ps
from ps.launch import Cluster, find_program

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "..", "examples", "train_fashion_mnist.py")
ENV1 = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def run_workers(cluster, argv_of_rank, timeout_s=600):
    procs = [subprocess.Popen(argv_of_rank(r), env=dict(
        ENV1, **cluster.worker_env(r)), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL) for r in range(cluster.nworkers)]
    for p in procs:
        if p.wait(timeout=timeout_s) != 0:
            raise SystemExit(f"a worker exited {p.returncode}")


def torch_cluster(steps, tmp):
    report = os.path.join(tmp, "py.json")
    with Cluster(2, 2, "bsp", log_dir=os.path.join(tmp, "py"),
                 heartbeat_timeout_ms=3000) as c:
        run_workers(c, lambda r: [sys.executable, EXAMPLE, "--epochs", "1",
                                  "--max-steps", str(steps), "--report",
                                  report])
    with open(report) as f:
        return json.load(f)["samples_per_sec"]


def c_cluster(steps, tmp):
    report = os.path.join(tmp, "c.json")
    with Cluster(2, 2, "bsp", log_dir=os.path.join(tmp, "c"),
                 heartbeat_timeout_ms=3000) as c:
        run_workers(c, lambda r: [find_program("ps-worker"), "--scheduler",
                                  c.endpoint, "--rank", str(r), "--epochs",
                                  "1", "--max-steps", str(steps),
                                  "--device", "cpu", "--log-format", "logfmt",
                                  "--report", report if r == 0 else ""]
                    if r == 0 else
                    [find_program("ps-worker"), "--scheduler", c.endpoint,
                     "--rank", str(r), "--epochs", "1", "--max-steps",
                     str(steps), "--device", "cpu", "--log-format", "logfmt"])
    with open(report) as f:
        return json.load(f)["samples_per_sec"]


def torch_alone(steps, tmp):
    report = os.path.join(tmp, "alone.json")
    subprocess.run([sys.executable, EXAMPLE, "--standalone", "--epochs", "1",
                    "--batch-size", "64", "--max-steps", str(steps),
                    "--report", report], env=ENV1, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=600)
    with open(report) as f:
        return json.load(f)["samples_per_sec"]


SIZES = {"4K": 1024, "1M": 262144}


def python_calls(tmp, reps=2000, seconds=1.0):
    out = {}
    with Cluster(1, 1, "asp", replication=1, secure=False,
                 log_dir=tempfile.mkdtemp(dir=tmp, prefix="calls.")) as c:
        total = max(SIZES.values())
        m = ps.Model([ps.Tensor("w", total)], learning_rate=1e-6)
        with ps.Client(scheduler=c.endpoint, model=m) as cl:
            for name, n in SIZES.items():
                buf = np.zeros(n, np.float32)
                for op, fn in (("push", cl.push), ("pull", cl.pull)):
                    times = []
                    end = time.perf_counter() + seconds
                    for i in range(reps):
                        t0 = time.perf_counter_ns()
                        fn(0, buf, 0)
                        times.append(time.perf_counter_ns() - t0)
                        if time.perf_counter() > end:
                            break
                    times = times[len(times) // 10:]  # warm-up out
                    out[(op, name)] = np.median(times) / 1e3
    return out


def c_calls():
    """ps-bench's median per blocking call (window 1), pulls copied into
    the client's array as ps.Client.pull does (--pull-copy)."""
    r = subprocess.run([find_program("ps-bench"), "--local", "1,1",
                        "--replication", "1", "--ops", "push,pull",
                        "--sizes", "4K,1M", "--windows", "1", "--pull-copy",
                        "--json"], capture_output=True, text=True,
                       timeout=600, env=dict(ENV1, PS_INSECURE="true"))
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            j = json.loads(line)
            name = {4096: "4K", 1048576: "1M"}[j["size"]]
            out[(j["op"], name)] = j["p50_us"]
    if r.returncode != 0 or not out:
        raise SystemExit(f"ps-bench failed: {r.stderr[-2000:]}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls-only", action="store_true",
                    help="only the per-call figures (part 2)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ps-pyfig.")
    print(f"logs in {tmp}", file=sys.stderr)
    if not a.calls_only:
        py = torch_cluster(a.steps, tmp)
        cc = c_cluster(a.steps, tmp)
        alone = torch_alone(a.steps, tmp)
        print(f"MLP, BSP, {a.steps} steps of 64 samples:")
        print(f"  PyTorch, 2 servers + 2 workers x 32  {py:9.0f} samples/s")
        print(f"  C ps-worker, 2 servers + 2 workers   {cc:9.0f} samples/s")
        print(f"  PyTorch, one process, batch 64       {alone:9.0f} samples/s")
    rounds = []
    for _ in range(a.rounds):
        rounds.append((python_calls(tmp), c_calls()))
    print(f"one blocking call, 1 server, 1 client, ASP, no replica; medians "
          f"over {a.rounds} alternating rounds (each round's median per "
          f"call):")
    print("  op   size   python us   C us   python - C (min..max of rounds)")
    for key in rounds[0][0]:
        py_us = [r[0][key] for r in rounds]
        c_us = [r[1][key] for r in rounds]
        diff = [p - c for p, c in zip(py_us, c_us)]
        print(f"  {key[0]:4s} {key[1]:4s} {np.median(py_us):10.1f} "
              f"{np.median(c_us):7.1f} {np.median(diff):10.1f} "
              f"({min(diff):.1f}..{max(diff):.1f})")

if __name__ == "__main__":
    main()
