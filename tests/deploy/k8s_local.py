#!/usr/bin/python3
"""The pods of deploy/k8s/base, played on one host by the real daemons:
each container's command, environment and initContainer (the key copy)
taken from the rendered manifests, a Secret volume imitated as kubelet
lays it out (symlinks into ..data, files group-readable as fsGroup makes
them), and the job trained to its end.

  k8s_local.py BIN_DIR WORK_DIR

Only what a cluster supplies is replaced: DNS names (ps-scheduler,
ps-server-N.ps-server) by 127.0.0.1, one IP per pod by a port per pod
(PS_BIND, PS_ADVERTISE, PS_METRICS_BIND), the volume mounts by
directories under WORK_DIR, and the job is cut short (PS_MAX_STEPS) with a
checkpoint every few steps so the shared checkpoint path is exercised.
Runs in a network namespace of its own (unshare -n) so its ports meet no
other test's; exit 77 where one cannot be made. Checks: the key copy
makes keys the daemons accept (and a daemon pointed at the imitated
Secret directly is refused, which is why the copy exists), every probe
path answers as the manifests expect (readiness /healthz 200 once
serving, liveness /metrics 200), the workers' ranks are the completion
indexes, every process exits 0, and a complete checkpoint (MANIFEST and
the servers' shards) is on the shared volume.
"""
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import k8s_validate as kv  # noqa: E402

STEPS = 60
CKPT_EVERY = 20


def fail(msg):
    print("k8s_local: FAIL: " + msg)
    sys.exit(1)


def in_netns():
    if os.environ.get("PS_K8S_LOCAL_NETNS") == "1":
        return
    env = dict(os.environ, PS_K8S_LOCAL_NETNS="1")
    cmd = ["unshare", "-n", "sh", "-c",
           'ip link set lo up && exec "$0" "$@"', sys.executable] + sys.argv
    if os.geteuid() != 0:
        cmd.insert(1, "-r")
    probe = subprocess.run(["unshare"] + cmd[1:cmd.index("sh")] + ["true"],
                           capture_output=True)
    if probe.returncode != 0:
        print("SKIPPED: cannot make a network namespace (unshare -n): %s" %
              probe.stderr.decode().strip())
        sys.exit(77)
    sys.exit(subprocess.run(cmd, env=env).returncode)


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("PS_")}


def http_status(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                    timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def imitate_secret(secret_dir, items, src):
    """kubelet's layout: ..2026/FILE, ..data -> ..2026, FILE -> ..data/FILE."""
    data = os.path.join(secret_dir, "..2026_01_01")
    os.makedirs(data)
    for it in items:
        shutil.copy(os.path.join(src, it["key"]), os.path.join(data, it["path"]))
        os.chmod(os.path.join(data, it["path"]), 0o440)
        os.symlink("..data/" + it["path"], os.path.join(secret_dir, it["path"]))
    os.symlink("..2026_01_01", os.path.join(secret_dir, "..data"))


class Pod:
    def __init__(self, name, doc, work, bin_dir, keys_src, fieldrefs, overrides):
        self.name = name
        self.root = os.path.join(work, name)
        spec = kv.pod_spec(doc)
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        # Volumes: the Secret imitated, emptyDirs and the claim as folders.
        self.paths = {}
        for v in vols.values():
            if "secret" in v:
                d = os.path.join(self.root, "vol", v["name"])
                os.makedirs(d)
                imitate_secret(d, v["secret"]["items"], keys_src)
            elif "emptyDir" in v:
                d = os.path.join(self.root, "vol", v["name"])
                os.makedirs(d)
            else:
                d = os.path.join(work, "claim-" + v["persistentVolumeClaim"]["claimName"])
                os.makedirs(d, exist_ok=True)
            self.paths[v["name"]] = d
        # A pod inherits nothing from this test's environment.
        self.path_env = clean_env()
        self.path_env["PATH"] = bin_dir + ":" + os.environ.get("PATH", "")
        for ic in spec.get("initContainers") or []:
            cmd = [self.mapped(ic, a) for a in ic["command"]]
            r = subprocess.run(cmd, env=self.path_env, capture_output=True, text=True)
            if r.returncode != 0:
                fail("%s: initContainer %s: %s" % (name, ic["name"], r.stderr))
        self.c = kv.ctr(doc)
        env = {}
        for e in self.c.get("env") or []:
            if "value" in e:
                env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)],
                                        str(e["value"]))
            else:
                env[e["name"]] = fieldrefs[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for k, v in env.items():
            if isinstance(v, str) and v.startswith("/"):
                env[k] = self.mapped(self.c, v)
        self.env = env
        env.update(overrides)
        self.proc = None

    def start(self, **overrides):
        self.env.update(overrides)
        self.metrics = int(self.env["PS_METRICS_BIND"].rsplit(":", 1)[1])
        self.log = open(os.path.join(self.root, "log"), "w")
        self.proc = subprocess.Popen(self.c["command"], cwd=self.root,
                                     env=dict(self.path_env, **self.env),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def mapped(self, c, s):
        """A container path (or a command holding some) on this host."""
        for m in sorted(c.get("volumeMounts") or [],
                        key=lambda m: -len(m["mountPath"])):
            s = s.replace(m["mountPath"], self.paths[m["name"]])
        return s

    def tail(self):
        self.log.flush()
        with open(os.path.join(self.root, "log")) as fp:
            return "".join(fp.readlines()[-15:])


def main(bin_dir, work):
    in_netns()
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tree = kv.load_tree(kv.DEFAULT_DIR)
    errs = []
    docs = [d for _, d in kv.render(tree, "base", errs)]
    if errs:
        fail("; ".join(errs))
    by_role = {kv.role_of(d)[0]: d for d in docs if d["kind"] in kv.WORKLOADS}
    keys = os.path.join(work, "keys")
    for r in ("scheduler", "server", "worker", "admin"):
        subprocess.run([os.path.join(bin_dir, "psctl"), "keygen", "--role", r,
                        "--out", keys], check=True, capture_output=True,
                       env=clean_env())

    sched_doc = by_role["ps-scheduler"]
    senv = {e["name"]: e.get("value") for e in kv.ctr(sched_doc)["env"]}
    n_servers, n_workers = int(senv["PS_SERVERS"]), int(senv["PS_WORKERS"])
    sport = kv.endpoint_port(senv["PS_BIND"])[1]

    # The Secret as kubelet mounts it is refused: why the initContainer.
    bad = os.path.join(work, "secret-direct")
    os.makedirs(bad)
    imitate_secret(bad, [{"key": f, "path": f} for f in sorted(os.listdir(keys))], keys)
    r = subprocess.run([os.path.join(bin_dir, "ps-scheduler"), "--keys-dir", bad,
                        "--bind", "tcp://127.0.0.1:%d" % sport],
                       capture_output=True, text=True, timeout=30, env=clean_env())
    if r.returncode != 2 or "symbolic links" not in r.stderr:
        fail("a Secret mounted as PS_KEYS_DIR was not refused: exit %d %s" %
             (r.returncode, r.stderr))
    print("k8s_local: the Secret's own layout is refused: %s" %
          r.stderr.splitlines()[0])

    sched_addr = "tcp://127.0.0.1:%d" % sport
    pods = [Pod("scheduler", sched_doc, work, bin_dir, keys, {},
                {"PS_METRICS_BIND": "127.0.0.1:9400",
                 "PS_CHECKPOINT_EVERY_STEPS": str(CKPT_EVERY)}).start()]
    server_doc = by_role["ps-server"]
    sn = server_doc["spec"]["serviceName"]
    for i in range(server_doc["spec"]["replicas"]):
        name = "%s-%d" % (server_doc["metadata"]["name"], i)
        p = Pod(name, server_doc, work, bin_dir, keys, {"metadata.name": name},
                {"PS_SCHEDULER": sched_addr})
        bind = kv.endpoint_port(p.env["PS_BIND"])[1]
        want = "tcp://%s.%s:%d" % (name, sn, bind)
        if p.env["PS_ADVERTISE"] != want:
            fail("%s advertises %s, not %s" % (name, p.env["PS_ADVERTISE"], want))
        port = bind + i  # an address per pod in a cluster; a port each here
        pods.append(p.start(PS_BIND="tcp://127.0.0.1:%d" % port,
                            PS_ADVERTISE="tcp://127.0.0.1:%d" % port,
                            PS_METRICS_BIND="127.0.0.1:%d" % (9401 + i)))
    worker_doc = by_role["ps-worker"]
    workers = []
    ann = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    for i in range(worker_doc["spec"]["completions"]):
        w = Pod("ps-worker-%d" % i, worker_doc, work, bin_dir, keys,
                {ann: str(i)},
                {"PS_SCHEDULER": sched_addr,
                 "PS_MAX_STEPS": str(STEPS),
                 "PS_METRICS_BIND": "127.0.0.1:%d" % (9411 + i)})
        if w.env["PS_RANK"] != str(i):
            fail("worker %d has PS_RANK %s" % (i, w.env["PS_RANK"]))
        workers.append(w.start())
    pods += workers
    if len(pods) != 1 + n_servers + n_workers:
        fail("%d pods for PS_SERVERS %d and PS_WORKERS %d" %
             (len(pods), n_servers, n_workers))

    # Probes as kubelet would ask them, until the workers are done.
    ready, alive = set(), set()
    deadline = time.time() + 240
    try:
        while any(w.proc.poll() is None for w in workers):
            if time.time() > deadline:
                fail("the job did not end in 240 s:\n" +
                     "\n".join("--- %s\n%s" % (p.name, p.tail()) for p in pods))
            for p in pods:
                if p.proc.poll() is not None:
                    continue
                if http_status(p.metrics, "/healthz") == 200:
                    ready.add(p.name)
                if http_status(p.metrics, "/metrics") == 200:
                    alive.add(p.name)
            time.sleep(0.2)
        codes = {}
        for p in pods:
            try:
                codes[p.name] = p.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                codes[p.name] = "still running"
    finally:
        for p in pods:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
    bad = {n: c for n, c in codes.items() if c != 0}
    if bad:
        fail("exit status %s:\n%s" % (bad, "\n".join(
            "--- %s\n%s" % (p.name, p.tail()) for p in pods if p.name in bad)))
    print("k8s_local: every process exited 0: %s" % ", ".join(sorted(codes)))
    names = {p.name for p in pods}
    daemons = {p.name for p in pods[:1 + n_servers]}
    if not daemons <= ready:
        fail("readiness /healthz never 200 for %s" % sorted(daemons - ready))
    if alive != names:
        fail("liveness /metrics never 200 for %s" % sorted(names - alive))
    print("k8s_local: readiness /healthz 200 seen on %s; liveness /metrics 200 on all" %
          ", ".join(sorted(ready)))
    for w in workers:
        with open(os.path.join(w.root, "log")) as fp:
            if not re.search(r"\brank=%s\b" % w.env["PS_RANK"], fp.read()):
                fail("%s's log never says rank=%s:\n%s" %
                     (w.name, w.env["PS_RANK"], w.tail()))
    ckpt = pods[0].env["PS_CHECKPOINT_DIR"]
    latest = os.path.join(ckpt, "LATEST")
    if not os.path.exists(latest):
        fail("no checkpoint in %s (LATEST missing): %s" %
             (ckpt, os.listdir(ckpt) if os.path.isdir(ckpt) else "no directory"))
    with open(latest) as fp:
        d = os.path.join(ckpt, fp.read().strip())
    files = sorted(os.listdir(d))
    if "MANIFEST" not in files or len(files) < 1 + n_servers:
        fail("checkpoint %s holds %s" % (d, files))
    print("k8s_local: checkpoint on the shared claim: %s: %s" %
          (os.path.relpath(d, work), ", ".join(files)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: k8s_local.py BIN_DIR WORK_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])))
