"""The extension ps._client, built against the libps-client that
pkg-config finds (pyproject.toml has the rest). The library's folder goes
into the extension's RUNPATH when it is not one the loader searches, as
`pkg-config --libs` users are told to do for a private prefix."""

import os
import shlex
import subprocess

from setuptools import Extension, setup


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "ps-client"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(
            "ps: pkg-config cannot find ps-client (install libps-client, "
            f"or set PKG_CONFIG_PATH to its lib/pkgconfig): {e}")
    return shlex.split(out)


cflags = pkg_config("--cflags")
libs = pkg_config("--libs")
libdir = os.path.realpath(pkg_config("--variable=libdir")[0])
system_dirs = {"/usr/lib", "/usr/lib64", "/usr/lib/x86_64-linux-gnu", "/lib"}

setup(ext_modules=[Extension(
    "ps._client", ["ps/_client.c"],
    include_dirs=[f[2:] for f in cflags if f.startswith("-I")],
    library_dirs=[f[2:] for f in libs if f.startswith("-L")],
    libraries=[f[2:] for f in libs if f.startswith("-l")],
    runtime_library_dirs=[] if libdir in system_dirs else [libdir],
    extra_compile_args=["-std=c11", "-Wall", "-Wextra"])])
