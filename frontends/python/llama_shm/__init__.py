"""Python client for llama-shm workers: ctypes over the C ABI (``libllama_shm_ffi.so``).

    from llama_shm import Client
    with Client(args=["--engine", "echo"]) as c:
        print(c.ask("Hello", system="Be terse.").text)      # "Be terse.\\nHello"
        for chunk in c.stream("Hello again"):
            print(chunk, end="")

The library is found through ``$LLAMA_SHM_FFI_LIB`` (the ``.so`` or its directory), else next
to the worker (``$LLAMA_SHM_WORKER``), else in this repository's ``target/release``, else on the
system's library path. The worker is ``worker=`` or, when omitted, ``$LLAMA_SHM_WORKER`` or the
``llama-shm-worker`` next to the library.

Threads. A :class:`Client` may be shared between threads:

- requests (:meth:`Client.ask`, :meth:`Client.stream`) run one after the other: each holds the
  client's request lock for its whole duration;
- :meth:`Client.cancel` may be called from any thread at any time (during a request, during or
  after :meth:`Client.shutdown`, from a signal handler); it never waits for a request, and after
  shutdown it returns ``False`` without calling into the library;
- :meth:`Client.shutdown` (also ``close()`` and leaving ``with``) may be called from any thread,
  several times and concurrently; it cancels the request in flight until it holds the request
  lock, then shuts the worker down once. It must not be called from a signal handler that may
  interrupt a request on the same thread: it would wait for that request, i.e. for itself;
- a :class:`Stream` is iterated by one thread; its ``close()`` may be called from any thread.

Native handles. Each handle of the C library is owned by one object and passed to the library
only while that object says it is alive: the ``lshm_client`` under the request lock (a request,
shutdown, and nothing else), the ``lshm_canceller`` under a count of the ``lshm_cancel`` calls in
progress (see :class:`_Canceller`). Freeing a handle first sets its attribute to ``None`` under the
same lock, so no call reaches the library with a freed handle, and each is freed exactly once.
"""

import ctypes
import ctypes.util
import os
import queue
import threading
from dataclasses import dataclass

__all__ = [
    "Client",
    "Response",
    "Stream",
    "LlamaShmError",
    "InvalidArgumentError",
    "WorkerNotFoundError",
    "StartupError",
    "RequestTimeoutError",
    "WorkerDiedError",
    "PromptTooLongError",
    "EngineError",
    "ClosedError",
    "ShutdownError",
    "library_version",
]

# --- errors ---------------------------------------------------------------------------------


class LlamaShmError(Exception):
    """A failed call. ``status`` is the C ABI's status code (``LSHM_E_*``)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


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


class AnswerTooLongError(LlamaShmError):
    """The answer grew past the client's bound (``max_answer_bytes``); the request was
    cancelled. The client stays usable."""


# Status codes of include/llama_shm.h.
LSHM_OK = 0
_ERRORS = {
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
}

_FINISH = {0: "unknown", 1: "stop", 2: "length", 3: "cancelled", 4: "deadline", 5: "error"}

# --- the C ABI ------------------------------------------------------------------------------

_LIB_NAME = "libllama_shm_ffi.so"


class _CResponse(ctypes.Structure):
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


_CHUNK_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_lib = None
_lib_lock = threading.Lock()


def _candidates():
    env = os.environ.get("LLAMA_SHM_FFI_LIB")
    if env:
        yield os.path.join(env, _LIB_NAME) if os.path.isdir(env) else env
        return
    worker = os.environ.get("LLAMA_SHM_WORKER")
    if worker:
        yield os.path.join(os.path.dirname(os.path.abspath(worker)), _LIB_NAME)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    yield os.path.join(repo, "target", "release", _LIB_NAME)
    found = ctypes.util.find_library("llama_shm_ffi")
    if found:
        yield found


def _load():
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        tried = []
        for path in _candidates():
            tried.append(path)
            if os.path.sep in path and not os.path.exists(path):
                continue
            lib = ctypes.CDLL(path)
            break
        else:
            raise LlamaShmError(
                5,
                "%s not found (tried %s); build it with `cargo build --release -p llama-shm-ffi` "
                "or set LLAMA_SHM_FFI_LIB" % (_LIB_NAME, ", ".join(tried) or "nothing"),
            )
        p, u32, u64, sz, st = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int32
        out = ctypes.POINTER(ctypes.c_void_p)
        resp = ctypes.POINTER(_CResponse)
        sigs = {
            "lshm_version": (ctypes.c_char_p, []),
            "lshm_status_message": (ctypes.c_char_p, [st]),
            "lshm_client_new": (st, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), sz, u64, out, out]),
            "lshm_client_worker_pid": (st, [p, ctypes.POINTER(u32)]),
            "lshm_client_set_max_answer_bytes": (st, [p, u64]),
            "lshm_request": (st, [p, ctypes.c_char_p, ctypes.c_char_p, u64, u32, resp, out]),
            "lshm_stream": (st, [p, ctypes.c_char_p, ctypes.c_char_p, u64, u32, _CHUNK_FN, p, resp, out]),
            "lshm_response_free": (None, [resp]),
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
        _lib = lib
        return lib


def library_version():
    """The C library's version string, e.g. ``"0.1.0"``."""
    return _load().lshm_version().decode()


def _check(lib, status, err=None):
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
    raise _ERRORS.get(status, LlamaShmError)(status, message)


def _encode(s, what):
    if not isinstance(s, str):
        raise TypeError("%s must be a str, not %s" % (what, type(s).__name__))
    if "\0" in s:
        raise InvalidArgumentError(1, "%s contains a NUL character" % what)
    return s.encode("utf-8")


def _ms(seconds, what):
    if seconds is None:
        return 0
    if seconds <= 0:
        raise ValueError("%s must be positive" % what)
    return max(1, int(round(seconds * 1000)))


@dataclass(frozen=True)
class Response:
    """An answer. ``finish`` is ``"stop"``, ``"length"``, ``"cancelled"``, ``"deadline"``,
    ``"error"`` or ``"unknown"``; times are in seconds."""

    text: str
    finish: str
    truncated: bool
    seq: int
    prompt_tokens: int
    generated_tokens: int
    prompt_time: float
    generation_time: float


def _take_response(lib, r):
    try:
        text = ctypes.string_at(r.text, r.text_len).decode("utf-8") if r.text else ""
        return Response(
            text=text,
            finish=_FINISH.get(r.finish, "unknown"),
            truncated=bool(r.truncated),
            seq=r.seq,
            prompt_tokens=r.prompt_tokens,
            generated_tokens=r.generated_tokens,
            prompt_time=r.prompt_time_us / 1e6,
            generation_time=r.generation_time_us / 1e6,
        )
    finally:
        lib.lshm_response_free(ctypes.byref(r))


# --- the client -----------------------------------------------------------------------------


class _Canceller:
    """Owns one ``lshm_canceller`` handle: the only code that passes it to the library.

    ``_busy`` counts the :meth:`cancel` calls between their check and their return from
    ``lshm_cancel``; it and ``_closed`` change only under ``_lock``, a small lock held for a few
    bytecodes, never across a library call. :meth:`free` marks the canceller closed and frees the
    handle only if no cancel is busy; otherwise the last busy cancel frees it on its way out. So:

    - ``lshm_canceller_free`` never runs while an ``lshm_cancel`` on the handle is in progress,
      and never twice (the handle is taken out of ``_ptr``, under the lock, by whoever frees it);
    - after :meth:`free`, :meth:`cancel` returns ``False`` without calling the library;
    - neither waits: a cancel waits only for other cancels' bookkeeping, free for nothing.

    The lock is reentrant so that a signal handler calling :meth:`cancel` while this thread is
    inside one does not deadlock; the count is ordered (increment, then read ``_ptr``) so that
    even a nested :meth:`free` cannot free a handle that an outer cancel is about to use.
    """

    def __init__(self, lib, ptr):
        self._lib = lib
        self._lock = threading.RLock()
        self._ptr = ptr  # a c_void_p, None once freed
        self._busy = 0
        self._closed = False

    def cancel(self):
        """``lshm_cancel``: whether a request was in flight; ``False`` once freed."""
        with self._lock:
            if self._closed:
                return False
            self._busy += 1
            ptr = self._ptr
        try:
            if ptr is None:  # freed in between by a nested free() (signal handler)
                return False
            in_flight = ctypes.c_int32()
            _check(self._lib, self._lib.lshm_cancel(ptr, ctypes.byref(in_flight)))
            return bool(in_flight.value)
        finally:
            with self._lock:
                self._busy -= 1
                dead = None
                if self._busy == 0 and self._closed:
                    dead, self._ptr = self._ptr, None  # free() left it to the last cancel
            if dead is not None:
                self._lib.lshm_canceller_free(dead)

    def free(self):
        """Frees the handle now, or (if a cancel is in the library) when the last one returns.
        Idempotent; does not wait."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._busy:
                return
            dead, self._ptr = self._ptr, None
        if dead is not None:
            self._lib.lshm_canceller_free(dead)

    def __del__(self):
        # Unreachable, so no cancel() is running: free() frees at once.
        if getattr(self, "_lib", None) is not None:
            self.free()


class Client:
    """A spawned worker and the connection to it. Use it as a context manager (``with``), or
    call :meth:`shutdown`.

    Thread safety: requests from several threads run one after the other (the request lock is
    held for each request's duration, and for shutdown); :meth:`cancel` works from any thread,
    never waits for a request and is a no-op returning ``False`` after shutdown;
    :meth:`shutdown` may be called from any thread, repeatedly and concurrently. The
    ``lshm_client`` handle (``_handle``) is used only under the request lock and is ``None``
    once freed; the ``lshm_canceller`` is owned by a :class:`_Canceller`. See the module's
    docstring.

    :param worker: path of ``llama-shm-worker`` (default: ``$LLAMA_SHM_WORKER``, else next to
        the library).
    :param args: extra worker arguments, e.g. ``["--engine", "echo"]`` or
        ``["--model", "m.gguf", "--greedy"]``.
    :param timeout: bound on each request, in seconds (``None``: the library's 600 s).
    :param max_answer_bytes: the most bytes one answer may have (``None``: the library's
        8 MiB). A worker that goes on past it (an endless answer) is cancelled and the request
        raises :class:`AnswerTooLongError`, so memory stays near the bound.
    :raises WorkerNotFoundError, StartupError: when the worker cannot be started.
    """

    def __init__(self, worker=None, args=(), timeout=None, max_answer_bytes=None):
        self._lib = _load()
        self._handle = None
        self._canceller = None
        self._lock = threading.Lock()  # the request lock: held for each use of _handle
        args = [_encode(a, "worker argument") for a in args]
        argv = (ctypes.c_char_p * max(1, len(args)))(*args)
        handle, err = ctypes.c_void_p(), ctypes.c_void_p()
        status = self._lib.lshm_client_new(
            None if worker is None else _encode(os.fspath(worker), "worker"),
            argv,
            len(args),
            _ms(timeout, "timeout"),
            ctypes.byref(handle),
            ctypes.byref(err),
        )
        _check(self._lib, status, err)
        # Not shared with any thread yet: a failure below frees what was made, here.
        try:
            canceller, pid = ctypes.c_void_p(), ctypes.c_uint32()
            _check(self._lib, self._lib.lshm_canceller_new(handle, ctypes.byref(canceller)))
            self._canceller = _Canceller(self._lib, canceller)
            _check(self._lib, self._lib.lshm_client_worker_pid(handle, ctypes.byref(pid)))
            if max_answer_bytes is not None:
                if not isinstance(max_answer_bytes, int) or max_answer_bytes < 1:
                    raise InvalidArgumentError(1, "max_answer_bytes must be a positive int")
                _check(self._lib, self._lib.lshm_client_set_max_answer_bytes(handle, max_answer_bytes))
        except BaseException:
            if self._canceller is not None:
                self._canceller.free()
            self._lib.lshm_client_free(handle)
            raise
        self._worker_pid = pid.value
        self._handle = handle

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.shutdown()
        except LlamaShmError:
            if exc_type is None:
                raise
        return False

    def __del__(self):
        # Abandoned without shutdown: free the handles (the worker is still shut down). The
        # client is unreachable, so no other thread can be using them (a Stream's background
        # thread holds a reference until its request has returned).
        lib = getattr(self, "_lib", None)
        handle = getattr(self, "_handle", None)
        self._handle = None
        if lib is not None and handle is not None:
            lib.lshm_client_free(handle)
        canceller = getattr(self, "_canceller", None)
        if canceller is not None:
            canceller.free()

    @property
    def worker_pid(self):
        """The worker's process id (it stays known after shutdown)."""
        return self._worker_pid

    def _live(self):
        """The client handle; call with the request lock held."""
        if self._handle is None:
            raise ClosedError(18, "the client is closed (shut down)")
        return self._handle

    def ask(self, user, system="", deadline=None, max_tokens=None):
        """Sends one request and returns its :class:`Response`.

        :param deadline: generation budget in seconds; when it passes, the answer so far comes
            back with ``finish == "deadline"``.
        :param max_tokens: most tokens to generate (``finish == "length"`` when reached).
        :raises LlamaShmError: a subclass saying why (timeout, worker died, closed, ...).
        """
        u, s = _encode(user, "user"), _encode(system, "system")
        d, m = _ms(deadline, "deadline"), self._max_tokens(max_tokens)
        r, err = _CResponse(), ctypes.c_void_p()
        with self._lock:
            handle = self._live()
            status = self._lib.lshm_request(handle, u, s, d, m, ctypes.byref(r), ctypes.byref(err))
        _check(self._lib, status, err)
        return _take_response(self._lib, r)

    def stream(self, user, system="", deadline=None, max_tokens=None):
        """Sends one request and returns a :class:`Stream`: iterate it for the answer's chunks
        (``str``) as the worker generates them; a failure is raised from the iteration. After
        the iteration ``stream.response`` holds the whole :class:`Response`."""
        u, s = _encode(user, "user"), _encode(system, "system")
        return Stream(self, u, s, _ms(deadline, "deadline"), self._max_tokens(max_tokens))

    @staticmethod
    def _max_tokens(n):
        if n is None:
            return 0
        if not 1 <= n < 2**32:
            raise ValueError("max_tokens must be in 1..2**32-1")
        return n

    def _stream_call(self, u, s, d, m, callback):
        r, err = _CResponse(), ctypes.c_void_p()
        with self._lock:
            handle = self._live()
            status = self._lib.lshm_stream(handle, u, s, d, m, callback, None, ctypes.byref(r), ctypes.byref(err))
        _check(self._lib, status, err)
        return _take_response(self._lib, r)

    def cancel(self):
        """Cancels the request in flight (from any thread): it returns promptly with
        ``finish == "cancelled"`` and the partial answer. Returns whether one was in flight;
        ``False``, without calling the library, once the client is shut down. Does not wait for
        the request (see :class:`_Canceller`)."""
        return self._canceller.cancel()

    def shutdown(self):
        """Shuts the worker down (cancelling a request in flight first) and closes the client.
        Idempotent, and safe to call from several threads at once: one of them shuts the worker
        down, the others wait for it and return.

        :raises ShutdownError: when the worker had to be killed or exited with a failure."""
        # Cancel until the request lock is ours: a request may start after a cancel.
        self._canceller.cancel()
        while not self._lock.acquire(timeout=0.05):
            self._canceller.cancel()
        try:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            err = ctypes.c_void_p()
            status = self._lib.lshm_client_shutdown(handle, ctypes.byref(err))
        finally:
            self._lock.release()
            # After the client: a cancel during its shutdown still finds a live canceller (it
            # may outlive the client, and then cancels nothing).
            self._canceller.free()
        _check(self._lib, status, err)

    close = shutdown


_DONE = object()


class Stream:
    """The chunks of one streamed request (see :meth:`Client.stream`). The request runs in a
    background thread; closing the stream early (``close()``, leaving a ``with`` block, or
    breaking out of a ``for`` over ``with client.stream(...)``) cancels it and waits for it."""

    def __init__(self, client, u, s, d, m):
        self._client = client
        self._queue = queue.Queue()
        self._finished = False
        self.response = None
        self._callback = _CHUNK_FN(self._on_chunk)  # kept alive for the call's duration
        self._thread = threading.Thread(target=self._run, args=(u, s, d, m), daemon=True)
        self._thread.start()

    def _on_chunk(self, ptr, length, _user_data):
        self._queue.put(ctypes.string_at(ptr, length).decode("utf-8"))

    def _run(self, u, s, d, m):
        try:
            self._queue.put((_DONE, self._client._stream_call(u, s, d, m, self._callback), None))
        except BaseException as e:  # handed to the iterating thread
            self._queue.put((_DONE, None, e))

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, str):
            return item
        _, response, error = item
        self._finished = True
        self._thread.join()
        if error is not None:
            raise error
        self.response = response
        raise StopIteration

    def close(self):
        """Cancels the request if it is still running and waits for it to end. May be called
        from any thread (it touches no native handle itself: it calls :meth:`Client.cancel`)."""
        # Cancel until the request ends: a cancel sent before the background thread has
        # started the request finds nothing in flight.
        while not self._finished:
            self._client.cancel()
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(item, str):
                continue
            _, self.response, _ = item
            self._finished = True
            self._queue.put(item)  # for an iteration blocked in another thread
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False
