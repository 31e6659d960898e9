"""Options of the suite:

- ``--installed-in VENV``: the run is against the wheel installed in the virtual environment
  ``VENV`` (tests/tests/ffi_frontends.rs passes it); ``test_installed_wheel`` then checks that
  the package, its library and its worker all come from there. Without it that test skips.
- ``--model GGUF``: a model for the tests that need a real engine (they skip without it).
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--installed-in", metavar="VENV", default=None, help="check the wheel installed in VENV")
    parser.addoption("--model", metavar="GGUF", default=None, help="a GGUF model for the llama engine")


@pytest.fixture
def installed_in(request):
    venv = request.config.getoption("--installed-in")
    if venv is None:
        pytest.skip("a source-tree run: --installed-in VENV checks an installed wheel")
    return venv


@pytest.fixture
def model(request):
    path = request.config.getoption("--model")
    if path is None:
        pytest.skip("needs --model GGUF (e.g. models/SmolLM2-135M-Instruct.Q4_1.gguf)")
    return path
