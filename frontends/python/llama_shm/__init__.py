"""Python client for llama-shm workers: ctypes over the C ABI (``libllama_shm_ffi.so``).

    from llama_shm import Client
    with Client(args=["--engine", "echo"]) as c:
        print(c.ask("Hello", system="Be terse.").text)      # "Be terse.\\nHello"
        for chunk in c.stream("Hello again"):
            print(chunk, end="")

        print(c.chat([{"role": "system", "content": "Be terse."},   # a conversation of
                      ("user", "Hello")]).text)                 # any length: "Be terse.\\nHello"
        print(c.embed(["a b", "zz"]), c.count_tokens("one two three"))   # 2 vectors of 16; 3

    async def main():                                       # asyncio: the loop goes on
        with Client(args=["--engine", "echo"]) as c:
            print((await c.aask("Hello")).text)
            async for chunk in c.astream("Hello again"):
                print(chunk, end="")

(Starting and shutting down a client block for the worker's start-up and exit: in a program
that must never block its loop, run those in an executor.)

A standalone worker (``llama-shm-worker --prefix P [--parallel N] [--max-queue M]``) serves
several processes: ``Client.attach("P")`` connects to it instead of spawning one. Each request
takes a free slot, waits first come first served while all are busy, and raises
:class:`BusyError` when the worker's queue is full; a prefix nobody serves raises
:class:`WorkerNotRunningError`. Leaving ``with`` (or ``close()``) detaches and leaves the worker
running for the others; ``shutdown()`` asks the shared worker to exit.

    with Client.attach("P", timeout=60) as c:
        print(c.ask("Hello").text)

Installed from the wheel, the package carries the library and the worker
(``llama_shm/libllama_shm_ffi.so``, ``llama_shm/llama-shm-worker``) and needs nothing else. In a
source checkout the library is found through ``$LLAMA_SHM_FFI_LIB`` (the ``.so`` or its
directory), else next to the worker (``$LLAMA_SHM_WORKER``), else in the repository's
``target/release``, else on the system's library path. The worker is ``worker=`` or, when
omitted, ``$LLAMA_SHM_WORKER`` or the ``llama-shm-worker`` next to the library. A library built
for another C ABI than this package's (``lshm_abi_version()``) is refused with
:class:`AbiMismatchError`.

Threads. A :class:`Client` may be shared between threads:

- requests (:meth:`Client.ask`, :meth:`Client.stream`, :meth:`Client.chat`,
  :meth:`Client.chat_stream`, their asyncio forms, :meth:`Client.embed`,
  :meth:`Client.count_tokens`) run one after the other: each holds the client's request lock for its whole duration;
- :meth:`Client.cancel` may be called from any thread at any time (during a request, during or
  after :meth:`Client.shutdown`, from a signal handler); it never waits for a request, and after
  shutdown it returns ``False`` without calling into the library. A signal handler, though,
  runs on the main thread only between bytecodes: while the main thread is in a synchronous
  :meth:`Client.ask` (inside the library) it runs only after the answer is complete, so Ctrl+C
  cannot cancel that ask. It can cancel a stream the main thread iterates, an asyncio request,
  or an ``ask`` made on another thread (see :meth:`Client.cancel`);
- :meth:`Client.shutdown` (also ``close()`` and leaving ``with``) may be called from any thread,
  several times and concurrently; it cancels the request in flight until it holds the request
  lock, then shuts the worker down once (``close()`` of an attached client detaches instead).
  It must not be called from a signal handler that may interrupt a request on the same thread:
  it would wait for that request, i.e. for itself;
- a :class:`Stream` is iterated by one thread; its ``close()`` may be called from any thread.
  Dropping it (``break``) cancels its request;
- requests on threads of their own (streams, asyncio) run on daemon threads; at exit, an
  ``atexit`` hook cancels those still running and waits for them (bounded), since a daemon
  thread inside the library when the interpreter finalises would abort the process.

Native handles. Each handle of the C library is owned by one object and passed to the library
only while that object says it is alive: the ``lshm_client`` under the request lock (a request,
shutdown, and nothing else), the ``lshm_canceller`` under a count of the ``lshm_cancel`` calls in
progress (see ``_Canceller``). Freeing a handle first sets its attribute to ``None`` under the
same lock, so no call reaches the library with a freed handle, and each is freed exactly once.
A client dropped without shutdown hands its ``lshm_client`` to a thread of the package's
(``_Reaper``), since freeing it shuts the worker down and may take seconds; at exit that thread
finishes its frees (bounded), and a worker whose client process is gone exits anyway.
"""

from ._client import Client
from ._errors import (
    AbiMismatchError,
    AnswerTooLongError,
    BusyError,
    ClosedError,
    EngineError,
    InvalidArgumentError,
    InvalidConstraintError,
    LibraryError,
    LlamaShmError,
    PromptTooLongError,
    RequestTimeoutError,
    RequestTooLargeError,
    ShutdownError,
    StartupError,
    UnsupportedError,
    WorkerDiedError,
    WorkerNotFoundError,
    WorkerNotRunningError,
)
from ._library import ABI_VERSION, load, loaded_path
from ._response import Response, Usage
from ._streams import AsyncStream, Stream

__all__ = [
    "ABI_VERSION",
    "Client",
    "Response",
    "Usage",
    "Stream",
    "AsyncStream",
    "LlamaShmError",
    "LibraryError",
    "AbiMismatchError",
    "InvalidArgumentError",
    "WorkerNotFoundError",
    "StartupError",
    "RequestTimeoutError",
    "WorkerDiedError",
    "PromptTooLongError",
    "EngineError",
    "ClosedError",
    "ShutdownError",
    "AnswerTooLongError",
    "BusyError",
    "WorkerNotRunningError",
    "InvalidConstraintError",
    "UnsupportedError",
    "RequestTooLargeError",
    "library_version",
    "library_path",
]


def library_version() -> str:
    """The C library's version string, e.g. ``"0.1.0"``."""
    return str(load().lshm_version().decode())


def library_path() -> str:
    """Where the C library was loaded from (loading it if needed)."""
    return loaded_path()
