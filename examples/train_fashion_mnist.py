#!/usr/bin/env python3
"""Trains the 784-256-128-10 MLP on Fashion-MNIST with PyTorch through the
parameter servers (ps.torch), as ps-worker trains it in C.

    python3 -m ps.launch --servers 2 --workers 2 -- \\
        python3 examples/train_fashion_mnist.py --epochs 3

Each worker reads $PS_SCHEDULER, $PS_RANK and $PS_NUM_WORKERS (ps.launch
sets them). Every worker walks the same global batch order (seeded) and
takes its slice of each global batch, so with BSP the job computes what one
process of batch workers x batch-size does. The servers apply SGD with
momentum; the cosine schedule scales each step's gradient (as ps-worker's
--lr-schedule cosine). Rank 0 evaluates on the test set after each epoch.
--standalone trains in this process alone, with the same rule applied by
torch.optim.SGD (v = m v + g; w -= lr v) from the servers' initial weights:
the baseline of the throughput figures.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import ps
import ps.torch as pst
from ps import fashion_mnist, initializers


def mlp():
    return torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def evaluate(net, x, y):
    with torch.no_grad():
        logits = net(x)
        loss = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
    return loss, acc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32,
                    help="samples per step per worker")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--lr-schedule", choices=("cosine", "constant"),
                    default="cosine")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0,
                    help="stop after this many global steps (0: no limit)")
    ap.add_argument("--data-dir", default=fashion_mnist.DEFAULT_DIR)
    ap.add_argument("--report", help="write a JSON report (rank 0)")
    ap.add_argument("--standalone", action="store_true",
                    help="train in this process alone, no servers")
    ap.add_argument("--workers", type=int,
                    default=int(os.environ.get("PS_NUM_WORKERS", "1")),
                    help="workers of the job (default $PS_NUM_WORKERS)")
    ap.add_argument("--threads", type=int, default=1,
                    help="PyTorch intra-op threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rank = int(os.environ.get("PS_RANK", "0"))
    workers = 1 if a.standalone else a.workers

    xtr, ytr, xte, yte = fashion_mnist.load(a.data_dir)
    xtr, ytr = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xte, yte = torch.from_numpy(xte), torch.from_numpy(yte)
    global_batch = a.batch_size * workers
    steps_per_epoch = len(xtr) // global_batch
    total = a.epochs * steps_per_epoch
    if a.max_steps:
        total = min(total, a.max_steps)

    def scale(step):
        if a.lr_schedule == "constant":
            return 1.0
        return (1.0 + math.cos(math.pi * step / total)) / 2.0

    net = mlp()
    if a.standalone:
        model, params = pst.model_spec(net, a.lr, a.momentum, a.seed)
        w0 = torch.from_numpy(initializers.model_weights(model))
        off = 0
        with torch.no_grad():
            for _, p in params:
                p.copy_(w0[off:off + p.numel()].view_as(p))
                off += p.numel()
        opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=a.momentum)
        trainer = None
    else:
        trainer = pst.ParameterServerTrainer(
            net, learning_rate=a.lr, momentum=a.momentum, seed=a.seed,
            grad_scale=scale, rank=rank)
        rank = trainer.client.rank

    step, train_time, losses = trainer.clock if trainer else 0, 0.0, []
    last_acc = float("nan")
    try:
        for epoch in range(a.epochs):
            order = np.random.default_rng(a.seed + epoch).permutation(len(xtr))
            t0 = time.perf_counter()
            first = step
            while step < total and step - epoch * steps_per_epoch < \
                    steps_per_epoch:
                i = (step - epoch * steps_per_epoch) * global_batch + \
                    rank * a.batch_size
                idx = torch.from_numpy(order[i:i + a.batch_size])
                x, y = xtr[idx], ytr[idx]
                if trainer:
                    losses.append(trainer.step(
                        lambda: F.cross_entropy(net(x), y)))
                else:
                    opt.zero_grad()
                    loss = F.cross_entropy(net(x), y)
                    loss.backward()
                    for p in net.parameters():
                        p.grad.mul_(scale(step))
                    opt.step()
                    losses.append(float(loss.detach()))
                step += 1
            train_time += time.perf_counter() - t0
            if rank == 0:
                test_loss, last_acc = evaluate(net, xte, yte)
                done_steps = step - first
                print(f"epoch {epoch + 1}/{a.epochs} steps {step} train_loss "
                      f"{np.mean(losses[-max(done_steps, 1):]):.4f} test_loss "
                      f"{test_loss:.4f} test_accuracy {last_acc:.4f}",
                      file=sys.stderr, flush=True)
            if step >= total:
                break
    except BaseException as e:
        if trainer:
            trainer.close(f"{type(e).__name__}: {e}")
        raise
    if trainer:
        trainer.close()
    samples_per_sec = step * global_batch / train_time if train_time else 0
    if rank == 0:
        report = {"test_accuracy": last_acc,
                  "train_loss": float(np.mean(losses[-100:])),
                  "samples_per_sec": samples_per_sec,
                  "train_seconds": train_time, "steps": step,
                  "workers": workers, "batch_size": a.batch_size,
                  "standalone": a.standalone}
        print(json.dumps(report), flush=True)
        if a.report:
            with open(a.report, "w") as f:
                json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
