"""pip install of worker/python against an installed libps-client: the
build tree installed into a fresh prefix (cmake --install), the package
built by pip from a copy of the sources with nothing but pkg-config
(--no-build-isolation: Debian's setuptools, offline), then used from there
by a clean interpreter: a local cluster from the prefix's daemons
(ps.launch) and a push and pull that must give exact weights."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import SCALE, log_dir

SOURCE = os.environ.get("PS_SOURCE_DIR",
                        os.path.join(os.path.dirname(__file__), "..", ".."))

PROGRAM = """
import numpy as np, ps, ps.launch
assert ps.__file__.startswith({site!r}), ps.__file__
with ps.launch.Cluster(1, 1, log_dir={logs!r}) as c:
    m = ps.Model([ps.Tensor("w", 100)], learning_rate=0.5)
    with ps.Client(scheduler=c.endpoint, model=m) as cl:
        g = np.arange(100, dtype=np.float32)
        cl.push("w", g, 0)
        w = np.zeros(100, np.float32)
        cl.pull("w", w, 1)
        assert (w == -0.5 * g).all(), w
    assert set(c.wait_daemons(20).values()) == {{0}}
print("package: ok")
"""


def test_pip_install_against_installed_library(request):
    build = os.environ.get("PS_BUILD_DIR")
    if not build:
        pytest.skip("PS_BUILD_DIR not set (ctest sets it)")
    if subprocess.run([sys.executable, "-m", "pip", "--version"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"{sys.executable} has no pip (python3-pip)")
    d = log_dir(request)
    prefix, src, site = (os.path.join(d, x) for x in ("prefix", "src",
                                                      "site"))
    cmake = os.environ.get("CMAKE", "cmake")
    subprocess.run([cmake, "--install", build, "--prefix", prefix],
                   check=True, capture_output=True, timeout=120 * SCALE)
    shutil.copytree(os.path.join(SOURCE, "worker", "python"), src,
                    ignore=shutil.ignore_patterns("__pycache__", "build",
                                                  "*.egg-info"))
    libdir = next(os.path.join(prefix, x) for x in ("lib", "lib64",
                                                    "lib/x86_64-linux-gnu")
                  if os.path.exists(os.path.join(prefix, x, "pkgconfig")))
    env = {"PATH": os.environ["PATH"], "HOME": d,
           "PKG_CONFIG_PATH": os.path.join(libdir, "pkgconfig")}
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                        "--no-build-isolation", "--no-index", "--target",
                        site, src], env=env, capture_output=True, text=True,
                       timeout=300 * SCALE)
    assert r.returncode == 0, r.stdout + r.stderr
    run_env = {"PATH": os.environ["PATH"], "PYTHONPATH": site,
               "PS_BIN_DIR": os.path.join(prefix, "bin"),
               "PS_INSECURE": "true"}  # a loopback test cluster, no keys
    r = subprocess.run([sys.executable, "-c",
                        PROGRAM.format(site=site, logs=os.path.join(d,
                                                                    "logs"))],
                       env=run_env, cwd=d, capture_output=True, text=True,
                       timeout=120 * SCALE)
    assert r.returncode == 0 and "package: ok" in r.stdout, \
        r.stdout + r.stderr[-3000:]
