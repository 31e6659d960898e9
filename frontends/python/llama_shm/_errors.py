"""The exceptions: one class per way a call fails, keyed by the C ABI's status codes."""

from __future__ import annotations

from typing import Dict, Optional, Type


class LlamaShmError(Exception):
    """A failed call. ``status`` is the C ABI's status code (``LSHM_E_*``), or ``None`` when
    the library itself could not be used (:class:`LibraryError`)."""

    def __init__(self, status: Optional[int], message: str) -> None:
        super().__init__(message)
        self.status = status


class LibraryError(LlamaShmError):
    """The C library ``libllama_shm_ffi.so`` was not found or could not be loaded
    (``status`` is ``None``; ``path`` is the file that failed to load, if one did)."""

    def __init__(self, message: str, path: Optional[str] = None) -> None:
        super().__init__(None, message)
        self.path = path


class AbiMismatchError(LibraryError):
    """The C library speaks another C ABI than this package: ``found`` is what its
    ``lshm_abi_version()`` returned (``None`` when it has no such function: ABI 1),
    ``expected`` the version this package was written for."""

    def __init__(self, path: str, found: Optional[int], expected: int) -> None:
        said = "has no lshm_abi_version (ABI 1)" if found is None else "has C ABI %d" % found
        super().__init__(
            "%s %s, but this llama_shm package needs ABI %d: rebuild the library "
            "(cargo build --release -p llama-shm-ffi) or install the llama_shm built with it" % (path, said, expected),
            path,
        )
        self.found = found
        self.expected = expected


class InvalidArgumentError(LlamaShmError, ValueError):
    """An argument the library rejects (NULL, not UTF-8, an embedded NUL)."""


class WorkerNotFoundError(LlamaShmError):
    """The worker binary was not found, does not exist, or is not executable."""


class StartupError(LlamaShmError):
    """The worker could not start (it exited, or was not ready in time)."""


class RequestTimeoutError(LlamaShmError, TimeoutError):
    """The request timeout passed."""


class WorkerDiedError(LlamaShmError):
    """The worker died during the request; the client is closed afterwards."""


class PromptTooLongError(LlamaShmError):
    """The prompt does not fit in the model's context (or the prompt field)."""


class EngineError(LlamaShmError):
    """The worker's engine failed, or the worker refused or could not answer the request."""


class ClosedError(LlamaShmError):
    """The client is closed: shut down, or unusable after an earlier failure."""


class ShutdownError(LlamaShmError):
    """The worker did not shut down cleanly (it had to be killed, or exited with a failure)."""


class WorkerNotRunningError(LlamaShmError):
    """:meth:`Client.attach` found no usable worker under the prefix: its objects are missing
    (no worker serves it; start one with ``llama-shm-worker --prefix P``), untrusted (another
    owner, or a mode wider than 0600) or malformed."""


class BusyError(LlamaShmError):
    """Every slot of the shared worker is busy and its admission queue is full (the
    worker's ``--max-queue``): nothing was sent. Retry later."""


class AnswerTooLongError(LlamaShmError):
    """The answer grew past the client's bound (``max_answer_bytes``); the request was
    cancelled. The client stays usable."""


class InvalidConstraintError(LlamaShmError, ValueError):
    """The worker cannot compile the request's JSON schema or grammar: nothing was
    generated."""


class UnsupportedError(LlamaShmError):
    """The worker cannot do what the request asks: a worker without a request area (seed-era)
    and a conversation, an engine without constraints (the echo engine and a schema) or
    without embeddings."""


class RequestTooLargeError(LlamaShmError):
    """The request does not fit the worker's request area (1 MiB of messages, schema or
    texts): nothing was sent."""


# Status codes of include/llama_shm.h.
LSHM_OK = 0
ERRORS: Dict[int, Type[LlamaShmError]] = {
    1: InvalidArgumentError,  # LSHM_E_INVALID_ARGUMENT
    2: InvalidArgumentError,  # LSHM_E_INVALID_UTF8
    3: LlamaShmError,  # LSHM_E_PANIC
    4: LlamaShmError,  # LSHM_E_NO_MEMORY
    5: WorkerNotFoundError,  # LSHM_E_WORKER_NOT_FOUND
    6: StartupError,  # LSHM_E_STARTUP
    7: PromptTooLongError,  # LSHM_E_ENCODE
    8: RequestTimeoutError,  # LSHM_E_TIMEOUT
    9: WorkerDiedError,  # LSHM_E_WORKER_DIED
    10: EngineError,  # LSHM_E_UNAUTHORIZED
    11: PromptTooLongError,  # LSHM_E_PROMPT_TOO_LONG
    12: EngineError,  # LSHM_E_ENGINE
    13: EngineError,  # LSHM_E_BAD_REQUEST
    14: ClosedError,  # LSHM_E_SHUTTING_DOWN
    15: EngineError,  # LSHM_E_UNKNOWN_STATUS
    16: WorkerDiedError,  # LSHM_E_RESTART_FAILED
    17: LlamaShmError,  # LSHM_E_CORRUPT
    18: ClosedError,  # LSHM_E_CLOSED
    19: LlamaShmError,  # LSHM_E_OS
    20: ShutdownError,  # LSHM_E_SHUTDOWN
    21: AnswerTooLongError,  # LSHM_E_ANSWER_TOO_LONG
    22: BusyError,  # LSHM_E_BUSY
    23: WorkerNotRunningError,  # LSHM_E_ATTACH
    24: InvalidConstraintError,  # LSHM_E_INVALID_CONSTRAINT
    25: UnsupportedError,  # LSHM_E_UNSUPPORTED
    26: RequestTooLargeError,  # LSHM_E_REQUEST_TOO_LARGE
}
