"""The C ABI (``include/llama_shm.h``): finding and loading ``libllama_shm_ffi.so``, checking
its ABI version, the signatures, and turning a status into an exception.

Where the library comes from, first found wins:

1. ``$LLAMA_SHM_FFI_LIB`` (the ``.so`` or its directory) — and nothing else when it is set;
2. next to ``$LLAMA_SHM_WORKER``;
3. inside this package (a wheel carries it, with the worker beside it);
4. the repository's ``target/release`` (a source checkout);
5. the system's library path (``ctypes.util.find_library``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Any, Iterator, List, Optional

from ._errors import ERRORS, LSHM_OK, AbiMismatchError, LibraryError, LlamaShmError

LIB_NAME = "libllama_shm_ffi.so"
# LSHM_ABI_VERSION of the header these bindings follow (the struct layouts below; 4 added
# lshm_client_attach, 5 conversations, request options, embeddings and token counts).
ABI_VERSION = 5

_HERE = os.path.dirname(os.path.abspath(__file__))


class CResponse(ctypes.Structure):
    """``lshm_response`` (unchanged since ABI 3)."""

    _fields_ = [
        ("text", ctypes.c_void_p),
        ("text_len", ctypes.c_size_t),
        ("finish", ctypes.c_uint32),
        ("truncated", ctypes.c_uint32),
        ("seq", ctypes.c_uint64),
        ("prompt_tokens", ctypes.c_uint32),
        ("generated_tokens", ctypes.c_uint32),
        ("prompt_time_us", ctypes.c_uint64),
        ("generation_time_us", ctypes.c_uint64),
        ("cached_tokens", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class COptions(ctypes.Structure):
    """``lshm_options``: start from ``lshm_options_default()``; 0 is the library's default."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("prompt_policy", ctypes.c_uint32),
        ("startup_timeout_ms", ctypes.c_uint64),
        ("request_timeout_ms", ctypes.c_uint64),
        ("max_answer_bytes", ctypes.c_uint64),
        ("restart_max_attempts", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("restart_backoff_ms", ctypes.c_uint64),
        ("restart_max_backoff_ms", ctypes.c_uint64),
    ]


class CMessage(ctypes.Structure):
    """``lshm_message`` (ABI 5): ``content`` is ``content_len`` bytes of UTF-8."""

    _fields_ = [
        ("role", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("content", ctypes.c_char_p),
        ("content_len", ctypes.c_size_t),
    ]


class CRequestOptions(ctypes.Structure):
    """``lshm_request_options`` (ABI 5): start from ``lshm_request_options_default()``; 0 or
    NULL is none."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("max_tokens", ctypes.c_uint32),
        ("deadline_ms", ctypes.c_uint64),
        ("seed", ctypes.c_uint32),
        ("drop_oldest", ctypes.c_uint32),
        ("json_schema", ctypes.c_char_p),
        ("grammar", ctypes.c_char_p),
    ]


class CResponseExtras(ctypes.Structure):
    """``lshm_response_extras`` (ABI 5): ``struct_size`` is set by the caller."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("dropped_messages", ctypes.c_uint32),
    ]

    def __init__(self) -> None:
        super().__init__(ctypes.sizeof(CResponseExtras), 0)


class CEmbeddings(ctypes.Structure):
    """``lshm_embeddings`` (ABI 5): ``count * dim`` floats, freed by ``lshm_embeddings_free``."""

    _fields_ = [
        ("values", ctypes.POINTER(ctypes.c_float)),
        ("count", ctypes.c_size_t),
        ("dim", ctypes.c_size_t),
    ]


# lshm_chunk_fn: void (*)(const char *chunk, size_t len, void *user_data)
CHUNK_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)

_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None
_lib_lock = threading.Lock()


def _candidates() -> Iterator[str]:
    env = os.environ.get("LLAMA_SHM_FFI_LIB")
    if env:
        yield os.path.join(env, LIB_NAME) if os.path.isdir(env) else env
        return
    worker = os.environ.get("LLAMA_SHM_WORKER")
    if worker:
        yield os.path.join(os.path.dirname(os.path.abspath(worker)), LIB_NAME)
    yield os.path.join(_HERE, LIB_NAME)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
    yield os.path.join(repo, "target", "release", LIB_NAME)
    found = ctypes.util.find_library("llama_shm_ffi")
    if found:
        yield found


def check_abi(lib: Any, path: str) -> None:
    """Raises :class:`AbiMismatchError` unless ``lib.lshm_abi_version()`` is
    :data:`ABI_VERSION`. Called before any other function of the library."""
    try:
        version = lib.lshm_abi_version
    except AttributeError:
        raise AbiMismatchError(path, None, ABI_VERSION) from None
    version.restype, version.argtypes = ctypes.c_uint32, []
    found = int(version())
    if found != ABI_VERSION:
        raise AbiMismatchError(path, found, ABI_VERSION)


def _declare(lib: ctypes.CDLL) -> None:
    p, u32, u64, sz, st = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int32
    out = ctypes.POINTER(ctypes.c_void_p)
    resp = ctypes.POINTER(CResponse)
    msgs, opts = ctypes.POINTER(CMessage), ctypes.POINTER(CRequestOptions)
    extras, tokens = ctypes.POINTER(CResponseExtras), ctypes.POINTER(u32)
    sigs = {
        "lshm_version": (ctypes.c_char_p, []),
        "lshm_status_message": (ctypes.c_char_p, [st]),
        "lshm_options_default": (COptions, []),
        "lshm_client_new": (st, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), sz, u64, out, out]),
        "lshm_client_attach": (st, [ctypes.c_char_p, ctypes.POINTER(COptions), out, out]),
        "lshm_client_worker_pid": (st, [p, ctypes.POINTER(u32)]),
        "lshm_client_set_max_answer_bytes": (st, [p, u64]),
        "lshm_request": (st, [p, ctypes.c_char_p, ctypes.c_char_p, u64, u32, resp, out]),
        "lshm_stream": (st, [p, ctypes.c_char_p, ctypes.c_char_p, u64, u32, CHUNK_FN, p, resp, out]),
        "lshm_response_free": (None, [resp]),
        "lshm_request_options_default": (CRequestOptions, []),
        "lshm_request_with": (st, [p, ctypes.c_char_p, ctypes.c_char_p, opts, resp, extras, out]),
        "lshm_stream_with": (st, [p, ctypes.c_char_p, ctypes.c_char_p, opts, CHUNK_FN, p, resp, extras, out]),
        "lshm_chat": (st, [p, msgs, sz, opts, resp, extras, out]),
        "lshm_chat_stream": (st, [p, msgs, sz, opts, CHUNK_FN, p, resp, extras, out]),
        "lshm_embed": (st, [p, ctypes.POINTER(ctypes.c_char_p), sz, ctypes.POINTER(CEmbeddings), out]),
        "lshm_embeddings_free": (None, [ctypes.POINTER(CEmbeddings)]),
        "lshm_count_tokens": (st, [p, ctypes.c_char_p, tokens, out]),
        "lshm_count_conversation_tokens": (st, [p, msgs, sz, tokens, out]),
        "lshm_canceller_new": (st, [p, out]),
        "lshm_cancel": (st, [p, ctypes.POINTER(ctypes.c_int32)]),
        "lshm_canceller_free": (None, [p]),
        "lshm_client_shutdown": (st, [p, out]),
        "lshm_client_free": (None, [p]),
        "lshm_string_free": (None, [p]),
    }
    for name, (restype, argtypes) in sigs.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, argtypes


def load() -> ctypes.CDLL:
    """The C library, loaded, ABI-checked and declared once per process.

    :raises LibraryError: not found, or not loadable.
    :raises AbiMismatchError: built for another C ABI (it is not used, and not cached)."""
    global _lib, _lib_path
    with _lib_lock:
        if _lib is not None:
            return _lib
        tried: List[str] = []
        for path in _candidates():
            tried.append(path)
            if os.path.sep in path and not os.path.exists(path):
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                raise LibraryError("loading %s failed: %s" % (path, e), path) from e
            break
        else:
            raise LibraryError(
                "%s not found (tried %s); build it with `cargo build --release -p llama-shm-ffi` "
                "and set LLAMA_SHM_FFI_LIB, or install the llama_shm wheel" % (LIB_NAME, ", ".join(tried))
            )
        check_abi(lib, path)
        _declare(lib)
        _lib, _lib_path = lib, path
        return lib


def loaded_path() -> str:
    """The path (or name) the C library was loaded from; loads it first if needed."""
    load()
    assert _lib_path is not None
    return _lib_path


def check(lib: Any, status: int, err: Optional[ctypes.c_void_p] = None) -> None:
    """Frees ``err`` (a ``c_void_p`` out-string) and raises the exception of ``status``."""
    message = None
    if err is not None and err.value:
        message = ctypes.string_at(err.value).decode("utf-8", "replace")
        lib.lshm_string_free(err)
        err.value = None
    if status == LSHM_OK:
        return
    if not message:
        message = lib.lshm_status_message(status).decode()
    raise ERRORS.get(status, LlamaShmError)(status, message)
