#!/usr/bin/env python3
"""Builds the llama_shm wheel: the Python package with the C library and the worker inside.

    cargo build --release --locked -p llama-shm-ffi
    cargo build --release --locked -p llama-shm-worker --bin llama-shm-worker
    python3 frontends/python/build_wheel.py            # → target/wheels/llama_shm-0.1.0-py3-none-linux_x86_64.whl

It copies the package into a temporary directory, adds ``libllama_shm_ffi.so`` and
``llama-shm-worker`` stripped of their debug info (``strip``), and runs ``pip wheel`` there
with this interpreter's setuptools and wheel, offline (``--no-index --no-build-isolation``), so
nothing is written into the source tree and nothing is downloaded. Needs setuptools >= 61 and
wheel (Debian: ``apt-get install python3-setuptools python3-wheel``; else ``pip install
setuptools wheel``) and binutils' ``strip``. Prints the wheel's files, then its path and size.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LIB = "libllama_shm_ffi.so"
WORKER = "llama-shm-worker"
SOURCES = ("pyproject.toml", "setup.py", "README.md")


class BuildError(Exception):
    """A missing input or tool, or a failed step; the message says which and what to do."""


def check_build_tools():
    try:
        import setuptools
    except ImportError:
        raise BuildError("%s has no setuptools: install python3-setuptools (apt) or setuptools (pip)" % sys.executable)
    major = int(setuptools.__version__.split(".")[0])
    if major < 61:
        raise BuildError("setuptools %s is too old (needs >= 61 for pyproject.toml)" % setuptools.__version__)
    try:
        import setuptools.command.bdist_wheel  # noqa: F401 (setuptools >= 70.1)
    except ImportError:
        try:
            import wheel.bdist_wheel  # noqa: F401
        except ImportError:
            raise BuildError(
                "%s has setuptools %s but no `wheel`: install python3-wheel (apt) or wheel (pip)"
                % (sys.executable, setuptools.__version__)
            )
    if shutil.which("strip") is None:
        raise BuildError("`strip` not found: install binutils")


def stage(stage_dir, lib, worker):
    """Copies the package's sources and the stripped binaries into ``stage_dir``."""
    for name in SOURCES:
        shutil.copy2(os.path.join(HERE, name), stage_dir)
    pkg = os.path.join(stage_dir, "llama_shm")
    os.mkdir(pkg)
    for name in sorted(os.listdir(os.path.join(HERE, "llama_shm"))):
        if name.endswith(".py") or name == "py.typed":
            shutil.copy2(os.path.join(HERE, "llama_shm", name), pkg)
    for src, name, how in ((lib, LIB, "--strip-unneeded"), (worker, WORKER, "--strip-all")):
        if not os.path.isfile(src):
            raise BuildError(
                "%s not found: build it first (cargo build --release --locked -p %s)"
                % (src, "llama-shm-ffi" if name == LIB else "llama-shm-worker --bin llama-shm-worker")
            )
        dst = os.path.join(pkg, name)
        subprocess.run(["strip", how, "-o", dst, src], check=True)
        os.chmod(dst, 0o755)


def build(lib, worker, out_dir):
    """Builds the wheel into ``out_dir`` and returns its path."""
    check_build_tools()
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama_shm_wheel_") as tmp:
        stage_dir, wheel_dir = os.path.join(tmp, "src"), os.path.join(tmp, "wheel")
        os.mkdir(stage_dir)
        stage(stage_dir, lib, worker)
        pip = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "wheel"]
        pip += ["--no-deps", "--no-index", "--no-build-isolation", "--wheel-dir", wheel_dir, stage_dir]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        ran = subprocess.run(pip, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if ran.returncode != 0:
            raise BuildError("pip wheel failed (%d):\n%s" % (ran.returncode, ran.stdout))
        (name,) = os.listdir(wheel_dir)
        if name.endswith("-any.whl"):
            raise BuildError("%s is not a platform wheel" % name)
        path = os.path.join(out_dir, name)
        shutil.move(os.path.join(wheel_dir, name), path)
    return path


def main(argv=None):
    release = os.path.join(REPO, "target", "release")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.path.join(release, LIB), help="the C library (default: %(default)s)")
    ap.add_argument("--worker", default=os.path.join(release, WORKER), help="the worker (default: %(default)s)")
    ap.add_argument("--out", default=os.path.join(REPO, "target", "wheels"), help="where to put the wheel")
    args = ap.parse_args(argv)
    try:
        path = build(args.lib, args.worker, args.out)
    except BuildError as e:
        print("build_wheel.py: %s" % e, file=sys.stderr)
        return 1
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            print("  %10d  %s" % (info.file_size, info.filename))
    print("%s (%d bytes)" % (path, os.path.getsize(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
