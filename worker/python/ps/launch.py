"""Start a local cluster and run workers in it.

    python3 -m ps.launch --servers 2 --workers 2 [--mode bsp] \\
        -- python3 examples/train_fashion_mnist.py --epochs 2

starts ps-scheduler (on a free loopback port) and the servers, then the
command once per worker with PS_SCHEDULER, PS_RANK and PS_NUM_WORKERS set,
waits for the workers, and stops everything it started: on success the
daemons end with the job (exit 0); on a worker's failure, Ctrl-C or a
deadline every process is killed and reaped. Exit status: 0 if every
worker and daemon exited 0, else 1 (2: bad usage).

Every link is CURVE-encrypted and authenticated: a key pair per role is
made in the log folder (psctl keygen) and given to the daemons and the
workers as PS_KEYS_DIR, which ps.Client reads. With PS_INSECURE=true in
the environment (as the test suites set it) the cluster runs in plaintext
instead.

The daemons are found in $PS_BIN_DIR, else on PATH. Cluster is the same
machinery for programs and tests.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time


class ClusterError(RuntimeError):
    pass


def find_program(name):
    d = os.environ.get("PS_BIN_DIR")
    if d:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    p = shutil.which(name)
    if p is None:
        raise ClusterError(f"{name} not found in $PS_BIN_DIR or on PATH")
    return p


class Cluster:
    """A scheduler and servers on loopback, each with its log in log_dir.
    Every wait has a deadline; stop() (or leaving the with block) kills and
    reaps whatever still runs."""

    ROLES = ("scheduler", "server", "worker", "admin")

    def __init__(self, servers=1, workers=1, mode="bsp", replication=None,
                 log_dir=None, heartbeat_timeout_ms=None, scheduler_args=(),
                 server_args=(), start_timeout_s=20.0, secure=None):
        """secure: CURVE keys made in log_dir/keys (True), plaintext
        (False), or None: plaintext only if PS_INSECURE=true is set."""
        self.nservers, self.nworkers, self.mode = servers, workers, mode
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="ps-cluster.")
        os.makedirs(self.log_dir, exist_ok=True)
        self.procs = {}  # name -> (Popen, log path)
        self.endpoint = None
        if secure is None:
            secure = os.environ.get("PS_INSECURE", "").lower() not in (
                "true", "1", "yes", "on")
        self.keys_dir = self.make_keys() if secure else None
        args = ["--bind", "tcp://127.0.0.1:*", "--servers", str(servers),
                "--workers", str(workers), "--mode", mode]
        if replication is not None:
            args += ["--replication", str(replication)]
        if heartbeat_timeout_ms is not None:
            args += ["--heartbeat-timeout-ms", str(heartbeat_timeout_ms)]
        try:
            log = self.spawn("scheduler", [find_program("ps-scheduler")] +
                             args + list(scheduler_args))
            line = self.wait_log(log, "event=listening", start_timeout_s,
                                 "scheduler")
            m = re.search(r"endpoint=(\S+)", line)
            if m is None:
                raise ClusterError(f"no endpoint in '{line.strip()}'")
            self.endpoint = m.group(1)
            for i in range(servers):
                self.start_server(i, server_args)
        except BaseException:
            self.stop()
            raise

    def make_keys(self):
        """A key pair per role in log_dir/keys (kept if already there)."""
        d = os.path.join(self.log_dir, "keys")
        psctl = find_program("psctl")
        for role in self.ROLES:
            if os.path.exists(os.path.join(d, role + ".key")):
                continue
            r = subprocess.run([psctl, "keygen", "--role", role, "--out", d],
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                raise ClusterError(f"psctl keygen --role {role}: "
                                   f"{r.stderr.strip()}")
        return d

    def daemon_env(self):
        env = dict(os.environ)
        if self.keys_dir:
            env["PS_KEYS_DIR"] = self.keys_dir
        else:  # plaintext, asked for: the programs refuse it otherwise
            env["PS_INSECURE"] = "true"
        return env

    def start_server(self, i, extra=()):
        return self.spawn(f"server{i}", [find_program("ps-server"),
                                         "--scheduler", self.endpoint] +
                          list(extra))

    def spawn(self, name, argv, env=None):
        path = os.path.join(self.log_dir, f"{name}.log")
        if env is None:
            env = self.daemon_env()
        with open(path, "ab") as log:
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env)
        self.procs[name] = (p, path)
        return path

    def worker_env(self, rank=None):
        env = self.daemon_env()
        env["PS_SCHEDULER"] = self.endpoint
        env["PS_NUM_WORKERS"] = str(self.nworkers)
        if rank is not None:
            env["PS_RANK"] = str(rank)
        return env

    def wait_log(self, path, needle, timeout_s, who):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with open(path, errors="replace") as f:
                    for line in f:
                        if needle in line:
                            return line
            except FileNotFoundError:
                pass
            p = self.procs.get(who, (None,))[0]
            if p is not None and p.poll() is not None:
                raise ClusterError(f"{who} exited {p.returncode} before "
                                   f"'{needle}' ({self.tail(who)})")
            if time.monotonic() > deadline:
                raise ClusterError(f"{who}: no '{needle}' within "
                                   f"{timeout_s} s")
            time.sleep(0.02)

    def kill(self, name, sig=signal.SIGKILL):
        p = self.procs[name][0]
        if p.poll() is None:
            p.send_signal(sig)
        p.wait(timeout=10)

    def wait(self, name, timeout_s):
        """Exit status of name, or ClusterError past the deadline."""
        try:
            return self.procs[name][0].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{name} still running after {timeout_s} s")

    def wait_daemons(self, timeout_s=30.0):
        """After the job: every daemon's exit status by name."""
        deadline = time.monotonic() + timeout_s
        out = {}
        for name in list(self.procs):
            if name == "scheduler" or name.startswith("server"):
                out[name] = self.wait(name, max(0.1, deadline -
                                                time.monotonic()))
        return out

    def tail(self, name, lines=15):
        try:
            with open(self.procs[name][1], errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except (KeyError, OSError):
            return ""

    def stop(self):
        for p, _ in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p, _ in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m ps.launch",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", choices=("bsp", "asp", "ssp"), default="bsp",
                    help="ssp: staleness 3 (ps-scheduler --staleness)")
    ap.add_argument("--replication", type=int, default=None)
    ap.add_argument("--heartbeat-timeout-ms", type=int, default=None,
                    help="the scheduler's (default its own, 400): silence "
                    "after which a node is dead; raise it on a loaded "
                    "machine")
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--timeout-s", type=float, default=3600.0,
                    help="deadline of the whole run")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("give the worker command after --")
    if a.servers < 1 or a.workers < 1:
        ap.error("--servers and --workers must be >= 1")
    status = 0
    try:
        with Cluster(a.servers, a.workers, a.mode, a.replication,
                     a.log_dir, a.heartbeat_timeout_ms) as c:
            print(f"ps.launch: scheduler {c.endpoint}, {a.servers} servers, "
                  f"logs in {c.log_dir}", file=sys.stderr)
            workers = []
            for r in range(a.workers):
                p = subprocess.Popen(cmd, env=c.worker_env(r))
                c.procs[f"worker{r}"] = (p, os.devnull)
                workers.append(p)
            deadline = time.monotonic() + a.timeout_s
            for r, p in enumerate(workers):
                rc = p.wait(timeout=max(0.1, deadline - time.monotonic()))
                if rc != 0:
                    print(f"ps.launch: worker {r} exited {rc}",
                          file=sys.stderr)
                    status = 1
                    break
            if status == 0:
                for name, rc in c.wait_daemons().items():
                    if rc != 0:
                        print(f"ps.launch: {name} exited {rc}",
                              file=sys.stderr)
                        status = 1
    except KeyboardInterrupt:
        print("ps.launch: interrupted, stopping", file=sys.stderr)
        return 130
    except (ClusterError, subprocess.TimeoutExpired) as e:
        print(f"ps.launch: {e}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
