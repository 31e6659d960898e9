"""Makes the wheel a platform wheel: it carries native code (``libllama_shm_ffi.so`` and
``llama-shm-worker``), so its tag is ``py3-none-<platform>`` (e.g. ``linux_x86_64``), never
``py3-none-any``; pure ctypes, so any CPython 3 of that platform takes it. Everything else is in
``pyproject.toml``. Build with ``build_wheel.py``, which stages the stripped binaries."""

import os

from setuptools import Distribution, setup

try:
    from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
except ImportError:
    from wheel.bdist_wheel import bdist_wheel

NATIVE = ("libllama_shm_ffi.so", "llama-shm-worker")


class NativeDistribution(Distribution):
    """Says it has native code, so the package goes to platlib and the wheel is not pure."""

    def has_ext_modules(self):
        return True


class platform_wheel(bdist_wheel):
    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform

    def run(self):
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama_shm")
        missing = [n for n in NATIVE if not os.path.isfile(os.path.join(here, n))]
        if missing:
            raise SystemExit(
                "llama_shm/%s missing: build the wheel with `python3 frontends/python/build_wheel.py` "
                "(it stages the library and the worker from target/release)" % " and ".join(missing)
            )
        super().run()


setup(distclass=NativeDistribution, cmdclass={"bdist_wheel": platform_wheel})
