"""The README's walk-through, run: python3 -m ps.launch starts a scheduler
and 2 servers and runs examples/train_fashion_mnist.py as 2 PyTorch workers
(BSP, 3 epochs), keyed as the README runs it (CURVE keys made by
ps.launch, not PS_INSECURE); the job reaches >= 0.88 test accuracy and
every process exits 0."""

import json
import os
import subprocess
import sys

from conftest import SCALE, log_dir

SOURCE = os.environ.get("PS_SOURCE_DIR",
                        os.path.join(os.path.dirname(__file__), "..", ".."))


def test_fashion_mnist_two_workers(request):
    d = log_dir(request)
    report = os.path.join(d, "report.json")
    cmd = [sys.executable, "-m", "ps.launch", "--servers", "2", "--workers",
           "2", "--log-dir", d,
           # 2 shared cores under other builds starve a heartbeat thread
           # past the default 400 ms now and then; this test is about
           # accuracy, not failure detection.
           "--heartbeat-timeout-ms", str(int(3000 * SCALE)), "--timeout-s", str(500 * SCALE), "--",
           sys.executable, os.path.join(SOURCE, "examples",
                                        "train_fashion_mnist.py"),
           "--epochs", "3", "--report", report]
    env = {k: v for k, v in os.environ.items() if k != "PS_INSECURE"}
    with open(os.path.join(d, "launch.log"), "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                            env=env, timeout=550 * SCALE).returncode
    with open(os.path.join(d, "launch.log")) as f:
        tail = "".join(line for line in f if not line.startswith("ts="))
    assert rc == 0, f"ps.launch exited {rc}:\n{tail[-3000:]}"
    with open(report) as f:
        r = json.load(f)
    print(tail[-1500:])
    assert r["workers"] == 2 and r["steps"] == 3 * (60000 // 64)
    assert r["test_accuracy"] >= 0.88, r
    with open(os.path.join(d, "scheduler.log")) as f:
        assert "event=curve " in f.read(), "the cluster ran without keys"
