#!/usr/bin/python3
"""Checks deploy/k8s offline: every manifest against the Kubernetes API's
strict schema, and the cluster's wiring across manifests.

  k8s_validate.py [K8S_DIR]        exit 0: valid; 1: what is wrong, listed
  k8s_validate.py --self-test      each deliberate break must be refused

Every kustomization under K8S_DIR (base/, gpu/) is rendered the way
`kubectl kustomize` would for the few features used here (resources,
strategic-merge patches, images), then each rendered set is checked:

- schema: tests/deploy/k8s-schema-v1.22.json (k8s_schema.py made it from
  Debian's python3-kubernetes), strict: a field the API does not have
  (`replica:`) is an error, as with kubeconform -strict;
- wiring: Services select pods and target their named ports; the
  StatefulSet's serviceName is a headless Service that publishes
  not-ready pods, and its pods start in parallel; the scheduler's
  PS_SERVERS and PS_WORKERS equal the server replicas and the Indexed
  worker Job's completions and parallelism; every PS_SCHEDULER names the
  scheduler's Service and port; servers advertise their stable DNS name;
  PS_BIND and PS_METRICS_BIND match the container ports, the Prometheus
  annotations and the probes; checkpoints and the state file lie on the
  PVC, mounted at the same path by the scheduler and every server; every
  PVC claim exists; every daemon gets its own role's secret key and
  PS_KEYS_DIR is the private copy; resources are set, and a CUDA worker
  asks for a GPU.

Needs python3-yaml and python3-jsonschema (Debian); exit 77 without them.
"""
import copy
import os
import re
import subprocess
import sys
import tempfile

try:
    import json
    import jsonschema
    import yaml
except ImportError as e:  # pragma: no cover
    print("SKIPPED: %s (Debian: python3-yaml python3-jsonschema)" % e)
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_FILE = os.path.join(HERE, "k8s-schema-v1.22.json")
DEFAULT_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "deploy", "k8s"))
WORKLOADS = ("Deployment", "StatefulSet", "Job")
ROLES = ("ps-scheduler", "ps-server", "ps-worker")
INDEX_FIELDS = ("metadata.annotations['batch.kubernetes.io/job-completion-index']",
                "metadata.labels['batch.kubernetes.io/job-completion-index']")
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}


# ---------------------------------------------------------------- loading

def load_tree(root):
    """{relative path: [documents]} of every .yaml under root."""
    tree = {}
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.endswith((".yaml", ".yml")):
                p = os.path.join(d, f)
                with open(p) as fp:
                    docs = [x for x in yaml.safe_load_all(fp) if x is not None]
                tree[os.path.relpath(p, root)] = docs
    return tree


def is_kustomization(rel):
    return os.path.basename(rel) in ("kustomization.yaml", "kustomization.yml")


def strategic_merge(base, patch):
    """Patch a manifest: maps merge, lists of named maps merge by name
    (containers, env, ports, volumes), other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and
            all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [copy.deepcopy(x) for x in base]
        for p in patch:
            for i, b in enumerate(out):
                if b["name"] == p["name"]:
                    out[i] = strategic_merge(b, p)
                    break
            else:
                out.append(copy.deepcopy(p))
        return out
    return copy.deepcopy(patch)


def doc_id(doc):
    return (doc.get("apiVersion"), doc.get("kind"),
            (doc.get("metadata") or {}).get("name"))


def render(tree, kdir, errors, seen=None):
    """[(source file, document)] of the kustomization in directory kdir
    (relative to the tree's root)."""
    seen = set() if seen is None else seen
    krel = os.path.join(kdir, "kustomization.yaml") if kdir else "kustomization.yaml"
    if krel not in tree:
        errors.append("%s: no kustomization.yaml" % (kdir or "."))
        return []
    k = tree[krel][0]
    seen.add(krel)
    for key in sorted(set(k) - KUSTOMIZATION_KEYS):
        errors.append("%s: %r is not a field this checker renders (%s)" %
                      (krel, key, ", ".join(sorted(KUSTOMIZATION_KEYS))))
    out = []
    for r in k.get("resources", []):
        rel = os.path.normpath(os.path.join(kdir, r))
        if os.path.join(rel, "kustomization.yaml") in tree:
            out += render(tree, rel, errors, seen)
        elif rel in tree:
            seen.add(rel)
            out += [(rel, copy.deepcopy(d)) for d in tree[rel]]
        else:
            errors.append("%s: resource %s does not exist" % (krel, r))
    for p in k.get("patches", []):
        rel = os.path.normpath(os.path.join(kdir, p.get("path", "")))
        if rel not in tree:
            errors.append("%s: patch %s does not exist" % (krel, p.get("path")))
            continue
        seen.add(rel)
        for pd in tree[rel]:
            for i, (src, d) in enumerate(out):
                if doc_id(d) == doc_id(pd):
                    out[i] = (src + " + " + rel, strategic_merge(d, pd))
                    break
            else:
                errors.append("%s: patch %s/%s matches no resource" %
                              (rel, pd.get("kind"), doc_id(pd)[2]))
    for img in k.get("images", []):
        new = img.get("newName", img["name"])
        if "newTag" in img:
            new += ":" + str(img["newTag"])
        for _, d in out:
            for c in containers(d, init=True):
                if c.get("image", "").split(":")[0] == img["name"]:
                    c["image"] = new
    return out


# ---------------------------------------------------------------- helpers

def pod_spec(doc):
    return (((doc.get("spec") or {}).get("template") or {}).get("spec")) or {}


def pod_labels(doc):
    return ((((doc.get("spec") or {}).get("template") or {}).get("metadata"))
            or {}).get("labels") or {}


def pod_annotations(doc):
    return ((((doc.get("spec") or {}).get("template") or {}).get("metadata"))
            or {}).get("annotations") or {}


def containers(doc, init=False):
    s = pod_spec(doc)
    return list(s.get("containers") or []) + (
        list(s.get("initContainers") or []) if init else [])


def role_of(doc):
    for c in containers(doc):
        cmd = c.get("command") or []
        if cmd and cmd[0] in ROLES:
            return cmd[0], c
    return None, None


def env_map(c, errors, where):
    """name -> value (a string, or ('fieldRef', path) / ('valueFrom', {}));
    $(VAR) references must name a variable defined above them."""
    out = {}
    for e in c.get("env") or []:
        if "value" in e:
            for ref in re.findall(r"\$\((\w+)\)", str(e["value"])):
                if ref not in out:
                    errors.append("%s: env %s uses $(%s), not defined before it" %
                                  (where, e["name"], ref))
            out[e["name"]] = str(e["value"])
        elif "fieldRef" in (e.get("valueFrom") or {}):
            out[e["name"]] = ("fieldRef", e["valueFrom"]["fieldRef"].get("fieldPath"))
        else:
            out[e["name"]] = ("valueFrom", e.get("valueFrom"))
    return out


def endpoint_port(ep):
    m = re.fullmatch(r"tcp://(.+):(\d+)", ep or "")
    return (m.group(1), int(m.group(2))) if m else (None, None)


def container_port(c, ref):
    """The containerPort a Service's targetPort or a probe's port means."""
    for p in c.get("ports") or []:
        if ref == p.get("name") or ref == p.get("containerPort"):
            return p.get("containerPort")
    return None


def as_int(s):
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- checks

def check_schema(docs, schema, errors):
    for src, d in docs:
        key = "%s/%s" % (d.get("apiVersion"), d.get("kind"))
        name = (d.get("metadata") or {}).get("name")
        where = "%s: %s %s" % (src, d.get("kind"), name)
        if key not in schema["kinds"]:
            errors.append("%s: no schema for apiVersion %s kind %s" %
                          (where, d.get("apiVersion"), d.get("kind")))
            continue
        sub = {"$ref": "#/definitions/%s" % schema["kinds"][key],
               "definitions": schema["definitions"]}
        v = jsonschema.Draft7Validator(sub)
        for e in sorted(v.iter_errors(d), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(x) for x in e.absolute_path) or "(top)"
            errors.append("%s: %s: %s" % (where, path, e.message))


def check_wiring(docs, errors):
    by_kind = {}
    for src, d in docs:
        by_kind.setdefault(d.get("kind"), []).append((src, d))
    services = {d["metadata"]["name"]: (src, d)
                for src, d in by_kind.get("Service", [])}
    pvcs = {d["metadata"]["name"] for _, d in by_kind.get("PersistentVolumeClaim", [])}
    workloads = [(s, d) for k in WORKLOADS for s, d in by_kind.get(k, [])]

    roles = {}
    for src, d in workloads:
        where = "%s: %s %s" % (src, d["kind"], d["metadata"]["name"])
        role, c = role_of(d)
        if role is None:
            errors.append("%s: no container runs one of %s" % (where, ", ".join(ROLES)))
            continue
        if role in roles:
            errors.append("%s: a second %s workload (first: %s)" %
                          (where, role, roles[role][0]))
        roles[role] = (where, d, c, env_map(c, errors, where))
        sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if d["kind"] == "Job":
            if sel is not None:
                errors.append("%s: a Job's selector is the controller's to set" % where)
        elif not sel or any(pod_labels(d).get(k) != v for k, v in sel.items()):
            errors.append("%s: selector %s does not match the pod labels %s" %
                          (where, sel, pod_labels(d)))
        check_pod(where, d, role, c, roles[role][3], pvcs, errors)

    # Services select pods and target their ports.
    for name, (src, svc) in services.items():
        where = "%s: Service %s" % (src, name)
        sel = (svc.get("spec") or {}).get("selector") or {}
        matched = [(s, d) for s, d in workloads
                   if sel and all(pod_labels(d).get(k) == v for k, v in sel.items())]
        if not matched:
            errors.append("%s: selector %s matches no pod template" % (where, sel))
        for p in (svc.get("spec") or {}).get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            for s, d in matched:
                if not any(container_port(c, target) for c in containers(d)):
                    errors.append("%s: port %s targets %r, which %s %s does not expose" %
                                  (where, p.get("name"), target, d["kind"],
                                   d["metadata"]["name"]))

    for r in ROLES:
        if r not in roles:
            errors.append("no workload runs %s" % r)
    if len(roles) < len(ROLES):
        return
    swhere, sched, sc, senv = roles["ps-scheduler"]
    vwhere, server, vc, venv = roles["ps-server"]
    wwhere, worker, wc, wenv = roles["ps-worker"]

    # The scheduler: one, never two at once.
    if sched["kind"] != "Deployment":
        errors.append("%s: the scheduler should be a Deployment" % swhere)
    if sched["spec"].get("replicas", 1) != 1:
        errors.append("%s: replicas %s: there is exactly one scheduler" %
                      (swhere, sched["spec"].get("replicas")))
    if (sched["spec"].get("strategy") or {}).get("type") != "Recreate":
        errors.append("%s: strategy must be Recreate (a rolling update runs two "
                      "schedulers on one state file)" % swhere)
    sched_svcs = [n for n, (_, s) in services.items()
                  if (s["spec"].get("selector") or {}) and
                  all(pod_labels(sched).get(k) == v for k, v in s["spec"]["selector"].items())]
    bhost, bport = endpoint_port(senv.get("PS_BIND"))
    if bport is None or bhost not in ("0.0.0.0", "*", "[::]"):
        errors.append("%s: PS_BIND %r must listen on every address "
                      "(tcp://0.0.0.0:PORT)" % (swhere, senv.get("PS_BIND")))
    elif container_port(sc, bport) is None:
        errors.append("%s: PS_BIND port %d is not a containerPort" % (swhere, bport))
    for where, env in ((vwhere, venv), (wwhere, wenv)):
        host, port = endpoint_port(env.get("PS_SCHEDULER"))
        host = (host or "").split(".")[0]
        if host not in sched_svcs:
            errors.append("%s: PS_SCHEDULER %r names no Service of the scheduler (%s)" %
                          (where, env.get("PS_SCHEDULER"), ", ".join(sched_svcs)))
            continue
        ports = services[host][1]["spec"].get("ports") or []
        hit = [p for p in ports if p.get("port") == port]
        if not hit or container_port(sc, hit[0].get("targetPort", port)) != bport:
            errors.append("%s: PS_SCHEDULER %r: Service %s port %s does not reach the "
                          "scheduler's PS_BIND port %s" %
                          (where, env.get("PS_SCHEDULER"), host, port, bport))

    # The servers: stable names through a headless Service.
    if server["kind"] != "StatefulSet":
        errors.append("%s: the servers should be a StatefulSet" % vwhere)
    else:
        sn = server["spec"].get("serviceName")
        if sn not in services:
            errors.append("%s: serviceName %r is not a Service here" % (vwhere, sn))
        else:
            hs = services[sn][1]["spec"]
            if hs.get("clusterIP") != "None":
                errors.append("%s: Service %s must be headless (clusterIP: None)" %
                              (vwhere, sn))
            if not hs.get("publishNotReadyAddresses"):
                errors.append("%s: Service %s must publishNotReadyAddresses: a server "
                              "is not ready before the first view, and needs its "
                              "name before it" % (vwhere, sn))
            if any(pod_labels(server).get(k) != v
                   for k, v in (hs.get("selector") or {}).items()):
                errors.append("%s: Service %s does not select the server pods" %
                              (vwhere, sn))
        if server["spec"].get("podManagementPolicy") != "Parallel":
            errors.append("%s: podManagementPolicy must be Parallel (OrderedReady "
                          "waits for server 0 to be ready, which waits for all)" % vwhere)
        bhost, vport = endpoint_port(venv.get("PS_BIND"))
        if vport is None or container_port(vc, vport) is None:
            errors.append("%s: PS_BIND %r is not on a containerPort" %
                          (vwhere, venv.get("PS_BIND")))
        want = "tcp://$(POD_NAME).%s:%s" % (sn, vport)
        if venv.get("POD_NAME") != ("fieldRef", "metadata.name"):
            errors.append("%s: POD_NAME must come from fieldRef metadata.name" % vwhere)
        adv = venv.get("PS_ADVERTISE")
        if adv != want and not (isinstance(adv, str) and
                                adv.startswith(want[:-len(str(vport)) - 1] + ".")):
            errors.append("%s: PS_ADVERTISE %r should be the stable name %r" %
                          (vwhere, adv, want))
        if sn in services and not any(
                p.get("port") == vport for p in services[sn][1]["spec"].get("ports") or []):
            errors.append("%s: Service %s has no port %s (PS_BIND)" % (vwhere, sn, vport))
    servers = as_int(senv.get("PS_SERVERS"))
    if servers is None or server["spec"].get("replicas", 1) != servers:
        errors.append("%s: replicas %s != the scheduler's PS_SERVERS %s" %
                      (vwhere, server["spec"].get("replicas", 1), senv.get("PS_SERVERS")))

    # The workers: an Indexed Job, every rank at once, rank = index.
    if worker["kind"] != "Job":
        errors.append("%s: the workers should be a Job" % wwhere)
    else:
        js = worker["spec"]
        workers = as_int(senv.get("PS_WORKERS"))
        if js.get("completionMode") != "Indexed":
            errors.append("%s: completionMode must be Indexed (the index is the rank)" %
                          wwhere)
        if workers is None or js.get("completions") != workers:
            errors.append("%s: completions %s != the scheduler's PS_WORKERS %s" %
                          (wwhere, js.get("completions"), senv.get("PS_WORKERS")))
        if js.get("parallelism") != js.get("completions"):
            errors.append("%s: parallelism %s != completions %s (BSP waits for every "
                          "worker)" % (wwhere, js.get("parallelism"), js.get("completions")))
        if pod_spec(worker).get("restartPolicy") not in ("OnFailure", "Never"):
            errors.append("%s: restartPolicy must be OnFailure or Never" % wwhere)
        rank = wenv.get("PS_RANK")
        if not (isinstance(rank, tuple) and rank[0] == "fieldRef" and
                rank[1] in INDEX_FIELDS):
            errors.append("%s: PS_RANK must come from the job-completion-index "
                          "(fieldRef %s)" % (wwhere, INDEX_FIELDS[0]))

    # Checkpoints: the scheduler's directory, the same volume and path on
    # every server.
    smounts = pvc_mounts(sched, sc)
    for var in ("PS_CHECKPOINT_DIR", "PS_STATE_FILE"):
        path = senv.get(var)
        if not isinstance(path, str):
            errors.append("%s: %s is not set" % (swhere, var))
            continue
        on = [m for m in smounts if path.startswith(m[0].rstrip("/") + "/")]
        if not on:
            errors.append("%s: %s %s is not on a PersistentVolumeClaim mount" %
                          (swhere, var, path))
        elif var == "PS_CHECKPOINT_DIR" and on[0] not in pvc_mounts(server, vc):
            errors.append("%s: the servers do not mount claim %s at %s, where the "
                          "scheduler's checkpoints (%s) are" %
                          (vwhere, on[0][1], on[0][0], path))

    # One image for every role (the Dockerfile's).
    images = {c.get("image") for _, d in workloads for c in containers(d, init=True)}
    if len(images) != 1:
        errors.append("containers run different images: %s" % ", ".join(sorted(map(str, images))))


def pvc_mounts(doc, c):
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod_spec(doc).get("volumes") or []
              if "persistentVolumeClaim" in v}
    return [(m["mountPath"], claims[m["name"]])
            for m in c.get("volumeMounts") or [] if m.get("name") in claims]


def check_pod(where, d, role, c, env, pvcs, errors):
    spec = pod_spec(d)
    vols = {v["name"]: v for v in spec.get("volumes") or []}
    for cc in containers(d, init=True):
        for m in cc.get("volumeMounts") or []:
            if m.get("name") not in vols:
                errors.append("%s: container %s mounts volume %r, which the pod "
                              "does not have" % (where, cc.get("name"), m.get("name")))
    for v in vols.values():
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and claim not in pvcs:
            errors.append("%s: volume %s claims %r, no such PersistentVolumeClaim" %
                          (where, v["name"], claim))

    # Metrics: one port, named, annotated, probed.
    mhost, mport = (None, None)
    m = re.fullmatch(r"(.+):(\d+)", env.get("PS_METRICS_BIND") or "") \
        if isinstance(env.get("PS_METRICS_BIND"), str) else None
    if m:
        mhost, mport = m.group(1), int(m.group(2))
    if mport is None or mhost not in ("0.0.0.0", "[::]"):
        errors.append("%s: PS_METRICS_BIND %r must listen on every address "
                      "(0.0.0.0:PORT) for probes and Prometheus" %
                      (where, env.get("PS_METRICS_BIND")))
    elif container_port(c, "metrics") != mport:
        errors.append("%s: containerPort 'metrics' (%s) != PS_METRICS_BIND port %d" %
                      (where, container_port(c, "metrics"), mport))
    ann = pod_annotations(d)
    if ann.get("prometheus.io/scrape") != "true" or as_int(ann.get("prometheus.io/port")) != mport:
        errors.append("%s: prometheus.io/scrape \"true\" and prometheus.io/port %r "
                      "must name the metrics port %s" %
                      (where, ann.get("prometheus.io/port"), mport))
    for probe, want_healthz in (("readinessProbe", True), ("livenessProbe", False)):
        g = (c.get(probe) or {}).get("httpGet")
        if not g:
            errors.append("%s: %s must be an httpGet on the metrics port" % (where, probe))
            continue
        if container_port(c, g.get("port")) != mport:
            errors.append("%s: %s port %r is not the metrics port %s" %
                          (where, probe, g.get("port"), mport))
        if want_healthz and g.get("path") != "/healthz":
            errors.append("%s: readinessProbe should ask /healthz, not %r" %
                          (where, g.get("path")))
        if not want_healthz and g.get("path") == "/healthz":
            errors.append("%s: livenessProbe must not ask /healthz: it is 503 while "
                          "the daemon waits for its peers or after the job, and a "
                          "restart then would not help" % where)

    # Keys: the role's own secret key, copied to a private directory.
    kdir = env.get("PS_KEYS_DIR")
    if env.get("PS_INSECURE") not in (None, "false"):
        errors.append("%s: PS_INSECURE is set: run with CURVE keys" % where)
    kmount = [mm for mm in c.get("volumeMounts") or [] if mm.get("mountPath") == kdir]
    if not kmount or "emptyDir" not in vols.get(kmount[0]["name"], {}):
        errors.append("%s: PS_KEYS_DIR %r must be an emptyDir mount that an "
                      "initContainer fills (the daemons refuse the Secret's "
                      "symlinks and group-readable files)" % (where, kdir))
    else:
        fillers = [ic for ic in spec.get("initContainers") or []
                   if any(mm.get("name") == kmount[0]["name"]
                          for mm in ic.get("volumeMounts") or [])]
        if not fillers or "chmod 600" not in " ".join(fillers[0].get("command") or []):
            errors.append("%s: no initContainer copies the keys into %s with chmod 600" %
                          (where, kdir))
    want_key = role.split("-")[1] + ".key"
    for v in vols.values():
        sec = v.get("secret")
        if not sec:
            continue
        keys = [i.get("key") for i in sec.get("items") or []]
        secrets = [k for k in keys if k.endswith(".key")]
        if secrets != [want_key]:
            errors.append("%s: Secret %s gives the secret keys %s; a %s needs "
                          "exactly %s" % (where, sec.get("secretName"), secrets,
                                          role, want_key))
        if "scheduler.pub" not in keys:
            errors.append("%s: Secret %s items lack scheduler.pub" %
                          (where, sec.get("secretName")))

    # Resources: what the scheduler places by; GPUs for CUDA workers.
    for cc in containers(d):
        r = cc.get("resources") or {}
        req, lim = r.get("requests") or {}, r.get("limits") or {}
        for what, have in (("requests.cpu", req.get("cpu")),
                           ("requests.memory", req.get("memory")),
                           ("limits.memory", lim.get("memory"))):
            if have is None:
                errors.append("%s: container %s has no %s" % (where, cc.get("name"), what))
        gpu = lim.get("nvidia.com/gpu")
        if role == "ps-worker" and cc is c:
            device = env.get("PS_DEVICE")
            cuda = isinstance(device, str) and device.startswith("cuda")
            if cuda and not gpu:
                errors.append("%s: PS_DEVICE %s without a limits nvidia.com/gpu" %
                              (where, device))
            if gpu and not cuda:
                errors.append("%s: asks for nvidia.com/gpu %s but PS_DEVICE is %r" %
                              (where, gpu, device))
        if gpu is not None and req.get("nvidia.com/gpu", gpu) != gpu:
            errors.append("%s: nvidia.com/gpu requests != limits" % where)


def validate_dir(tree, schema):
    """Every error of every kustomization in the tree, as strings."""
    errors = []
    kdirs = sorted(os.path.dirname(p) for p in tree if is_kustomization(p))
    if not kdirs:
        return ["no kustomization.yaml under the manifests' directory"]
    used = set()
    for kd in kdirs:
        errs = []
        docs = render(tree, kd, errs, used)
        check_schema(docs, schema, errs)
        check_wiring(docs, errs)
        errors += ["[%s] %s" % (kd or ".", e) for e in errs]
    for p in sorted(set(tree) - used):
        errors.append("%s is in no kustomization (dead file)" % p)
    return errors


def load_schema():
    with open(SCHEMA_FILE) as fp:
        return json.load(fp)


def main_check(root):
    schema = load_schema()
    tree = load_tree(root)
    errors = validate_dir(tree, schema)
    for e in errors:
        print("k8s_validate: " + e)
    if errors:
        print("k8s_validate: %d problem(s) in %s" % (len(errors), root))
        return 1
    n = sum(len(v) for k, v in tree.items() if not is_kustomization(k))
    print("k8s_validate: %s: %d documents in %d kustomizations valid (schema: %s)" %
          (root, n, sum(1 for k in tree if is_kustomization(k)),
           schema["$comment"].split(":")[0]))
    return 0


# ---------------------------------------------------------------- self-test

def find(tree, rel, kind):
    return [d for d in tree[rel] if d.get("kind") == kind][0]


def ctr(doc):
    return pod_spec(doc)["containers"][0]


def set_env(doc, name, value):
    for e in ctr(doc)["env"]:
        if e["name"] == name:
            e.clear()
            e.update({"name": name, "value": value})
            return
    raise KeyError(name)


def mutations():
    """(what, mutate(tree), a piece of the error it must cause)."""
    S, V, W = "base/scheduler.yaml", "base/servers.yaml", "base/workers.yaml"

    def m(f):
        return f

    def typo_replicas(t):
        spec = find(t, S, "Deployment")["spec"]
        spec["replica"] = spec.pop("replicas")

    def env_in_wrong_place(t):
        ctr(find(t, W, "Job"))["enviroment"] = ctr(find(t, W, "Job")).pop("env")

    def int_as_string(t):
        find(t, V, "StatefulSet")["spec"]["replicas"] = "2"

    def selector_mismatch(t):
        find(t, S, "Service")["spec"]["selector"]["app.kubernetes.io/component"] = "schedular"

    def deploy_selector(t):
        find(t, S, "Deployment")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "pss"

    def not_headless(t):
        del find(t, V, "Service")["spec"]["clusterIP"]

    def service_name(t):
        find(t, V, "StatefulSet")["spec"]["serviceName"] = "ps-servers"

    def ordered(t):
        del find(t, V, "StatefulSet")["spec"]["podManagementPolicy"]

    def servers_count(t):
        find(t, V, "StatefulSet")["spec"]["replicas"] = 3

    def workers_count(t):
        find(t, W, "Job")["spec"]["completions"] = 3

    def parallelism(t):
        find(t, W, "Job")["spec"]["parallelism"] = 1

    def not_indexed(t):
        del find(t, W, "Job")["spec"]["completionMode"]

    def rank_literal(t):
        set_env(find(t, W, "Job"), "PS_RANK", "0")

    def claim(t):
        for v in pod_spec(find(t, V, "StatefulSet"))["volumes"]:
            if "persistentVolumeClaim" in v:
                v["persistentVolumeClaim"]["claimName"] = "ps-checkpoint"

    def ckpt_path(t):
        set_env(find(t, S, "Deployment"), "PS_CHECKPOINT_DIR", "/var/lib/ps/checkpoints")

    def server_mount(t):
        for mm in ctr(find(t, V, "StatefulSet"))["volumeMounts"]:
            if mm["name"] == "shared":
                mm["mountPath"] = "/data"

    def target_port(t):
        find(t, V, "Service")["spec"]["ports"][0]["targetPort"] = "data"

    def scheduler_addr(t):
        set_env(find(t, W, "Job"), "PS_SCHEDULER", "tcp://ps-scheduler:7001")

    def advertise(t):
        set_env(find(t, V, "StatefulSet"), "PS_ADVERTISE", "tcp://ps-server:7101")

    def metrics_port(t):
        set_env(find(t, W, "Job"), "PS_METRICS_BIND", "0.0.0.0:9500")

    def liveness_healthz(t):
        ctr(find(t, V, "StatefulSet"))["livenessProbe"]["httpGet"]["path"] = "/healthz"

    def wrong_key(t):
        for v in pod_spec(find(t, V, "StatefulSet"))["volumes"]:
            if "secret" in v:
                v["secret"]["items"][0] = {"key": "worker.key", "path": "worker.key"}

    def keys_from_secret(t):
        for mm in ctr(find(t, S, "Deployment"))["volumeMounts"]:
            if mm["name"] == "keys":
                mm["name"] = "keys-secret"

    def no_resources(t):
        del ctr(find(t, V, "StatefulSet"))["resources"]["requests"]["memory"]

    def gpu_without_cuda(t):
        patch = t["gpu/workers-gpu.yaml"][0]
        for e in ctr(patch)["env"]:
            if e["name"] == "PS_DEVICE":
                e["value"] = "cpu"

    def rolling(t):
        find(t, S, "Deployment")["spec"]["strategy"]["type"] = "RollingUpdate"

    def dead_file(t):
        t["base/extra.yaml"] = [copy.deepcopy(find(t, "base/pvc.yaml",
                                                   "PersistentVolumeClaim"))]

    def undefined_var(t):
        env = ctr(find(t, V, "StatefulSet"))["env"]
        env.insert(0, env.pop([e["name"] for e in env].index("PS_ADVERTISE")))

    return [
        ("a misspelt field (replica:)", typo_replicas, "Additional properties are not allowed ('replica' was unexpected)"),
        ("a misplaced field (enviroment:)", env_in_wrong_place, "'enviroment' was unexpected"),
        ("a string where the API wants an integer", int_as_string, "'2' is not of type 'integer'"),
        ("a Service selector that matches no pod", selector_mismatch, "Service ps-scheduler: selector"),
        ("a Deployment selector that misses its pods", deploy_selector, "does not match the pod labels"),
        ("the servers' Service not headless", not_headless, "must be headless"),
        ("serviceName naming no Service", service_name, "serviceName 'ps-servers' is not a Service"),
        ("servers started in order", ordered, "podManagementPolicy must be Parallel"),
        ("3 servers for PS_SERVERS 2", servers_count, "replicas 3 != the scheduler's PS_SERVERS 2"),
        ("3 workers for PS_WORKERS 2", workers_count, "completions 3 != the scheduler's PS_WORKERS 2"),
        ("parallelism below completions", parallelism, "parallelism 1 != completions 2"),
        ("a Job that is not Indexed", not_indexed, "completionMode must be Indexed"),
        ("a fixed rank", rank_literal, "PS_RANK must come from the job-completion-index"),
        ("a claim with a typo", claim, "claims 'ps-checkpoint', no such PersistentVolumeClaim"),
        ("checkpoints off the volume", ckpt_path, "PS_CHECKPOINT_DIR /var/lib/ps/checkpoints is not on a PersistentVolumeClaim mount"),
        ("servers mount the volume elsewhere", server_mount, "the servers do not mount claim ps-checkpoints"),
        ("a targetPort no container has", target_port, "targets 'data'"),
        ("workers dial the wrong scheduler port", scheduler_addr, "does not reach the scheduler's PS_BIND port"),
        ("a server advertising no stable name", advertise, "should be the stable name"),
        ("metrics bound off the annotated port", metrics_port, "containerPort 'metrics' (9400) != PS_METRICS_BIND port 9500"),
        ("liveness on /healthz", liveness_healthz, "livenessProbe must not ask /healthz"),
        ("a server given the worker's key", wrong_key, "a ps-server needs exactly server.key"),
        ("keys straight from the Secret", keys_from_secret, "PS_KEYS_DIR '/etc/ps/keys' must be an emptyDir"),
        ("no memory request", no_resources, "has no requests.memory"),
        ("a GPU for a CPU worker", gpu_without_cuda, "asks for nvidia.com/gpu 1 but PS_DEVICE is 'cpu'"),
        ("a rolling scheduler", rolling, "strategy must be Recreate"),
        ("a manifest no kustomization uses", dead_file, "base/extra.yaml is in no kustomization"),
        ("$(POD_NAME) used before it is defined", undefined_var, "uses $(POD_NAME), not defined before it"),
    ]


def self_test(root):
    schema = load_schema()
    pristine = load_tree(root)
    base_errors = validate_dir(pristine, schema)
    failed = 0
    if base_errors:
        print("self-test: the manifests themselves are invalid:\n  " +
              "\n  ".join(base_errors))
        return 1
    for what, mutate, expect in mutations():
        tree = copy.deepcopy(pristine)
        mutate(tree)
        errs = validate_dir(tree, schema)
        hit = [e for e in errs if expect in e]
        if hit:
            print("ok:   %s -> %s" % (what, hit[0]))
        else:
            failed += 1
            print("FAIL: %s: no error containing %r; got:\n  %s" %
                  (what, expect, "\n  ".join(errs) or "(no error at all)"))
    # The command line on a broken copy on disk: exit 1, the field named.
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["cp", "-r", root + "/.", tmp], check=True)
        p = os.path.join(tmp, "base", "servers.yaml")
        with open(p) as fp:
            text = fp.read()
        assert "  replicas: 2\n" in text
        with open(p, "w") as fp:
            fp.write(text.replace("  replicas: 2\n", "  replica: 2\n", 1))
        r = subprocess.run([sys.executable, os.path.abspath(__file__), tmp],
                           capture_output=True, text=True)
        if r.returncode == 1 and "'replica' was unexpected" in r.stdout:
            print("ok:   the command line exits 1 on servers.yaml with replica:")
        else:
            failed += 1
            print("FAIL: the command line on replica: exited %d:\n%s%s" %
                  (r.returncode, r.stdout, r.stderr))
    n = len(mutations()) + 1
    print("self-test: %d of %d broken variants refused" % (n - failed, n))
    return 1 if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--self-test"]:
        sys.exit(self_test(args[1] if len(args) > 1 else DEFAULT_DIR))
    sys.exit(main_check(args[0] if args else DEFAULT_DIR))
