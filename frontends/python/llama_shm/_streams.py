"""Requests that run on a thread of their own: :class:`Stream` (iterated by a thread),
:class:`AsyncStream` and :func:`ask_async` (asyncio).

Each is a :class:`_Run`: a background thread holding the client's request lock for the call,
handing chunks and the end to a ``deliver`` function (a ``queue.Queue`` for threads, the event
loop's ``call_soon_threadsafe`` for asyncio). The user-facing object holds the run, never the
other way round, so dropping it (``break`` out of a ``for`` over ``client.stream(...)``)
finalises it at once and its ``__del__`` abandons the run.

Abandoning a run (:meth:`_Run.abandon`) never waits, so it is safe from a finaliser:

- it cancels its request if that is in flight — only its own: a client shared by threads may
  be serving another thread's request while the run waits for the request lock;
- if the request has not started yet, the run sees the mark under the request lock and does
  not send it (a cancel alone would find nothing in flight and miss it);
- each later chunk cancels again, closing the gap between those two.

Stopping (``close()``, ``aclose()``, a cancelled task) abandons and then waits, cancelling
again every 50 ms, until the run has ended: afterwards its request is over. A run that had
not sent its request yet (another thread's request holds the client) returns at once: it
never sends it.

At interpreter exit (:func:`stop_live_runs`, called from the package's ``atexit`` hook) every
run whose request may still be in the library is stopped the same way, with a bound. It must
be: a run's thread is a daemon thread, and once the interpreter finalises, a daemon thread that
tries to take the GIL is ended with ``pthread_exit``. A streaming run's thread takes it for
each chunk, inside ``lshm_stream_with`` (or ``lshm_chat_stream``), and ``pthread_exit``
unwinding through the library's frames aborts the process (SIGABRT, "FATAL: exception not
rethrown"). ``atexit`` functions run after the interpreter has joined the non-daemon threads
(whose streams go on to their end, as any work of theirs does) and before it finalises, while
daemon threads still run normally. (Non-daemon run threads would not help on Python 3.8, which
has no hook before that join: the join would wait for every stream's whole answer.)
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Set, Tuple, Union

from ._library import CHUNK_FN
from ._response import Response

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Type

    from ._client import Client, _Request

# What a run hands to ``deliver``: a chunk, or its end (the response or the error; both None
# when it was abandoned before it started).
End = Tuple[Optional[Response], Optional[BaseException]]
Item = Union[str, End]

_RETRY = 0.05  # seconds between the cancels of a stop

# The runs whose thread may still call the library (added before the thread starts, removed
# when its library call has returned), for stop_live_runs. The lock is held for a set
# operation only, and never from a finaliser.
_live: Set[_Run] = set()
_live_lock = threading.Lock()


def stop_live_runs(bound: float = 5.0, grace: float = 5.0) -> None:
    """At exit: abandons every live run and waits until each request that may be in the
    library has returned from it, cancelling every 50 ms — at most ``bound`` seconds; a run
    still in the library then (its worker does not answer the cancel) has its worker killed,
    which ends the request at once (``WorkerDiedError``), and is waited for ``grace`` seconds
    more. A run that has not sent its request never will (it makes no library call)."""
    with _live_lock:  # not those a forked child inherited: their threads and worker are not its
        runs = [run for run in _live if run.pid == os.getpid()]
    for run in runs:
        run.abandon()
    pending = [run for run in runs if not run.will_never_send()]
    deadline = time.monotonic() + bound
    for run in pending:
        while not run.done.wait(_RETRY) and time.monotonic() < deadline:
            run.cancel()
    stuck = [run for run in pending if not run.done.is_set()]
    for run in stuck:
        run.kill_worker()
    deadline = time.monotonic() + grace
    for run in stuck:
        run.done.wait(max(0.0, deadline - time.monotonic()))


class _Run:
    """One request on a background thread (see the module's docstring)."""

    def __init__(self, client: Client, req: _Request, deliver: Callable[[Item], None], streaming: bool) -> None:
        self._client = client
        self._deliver = deliver
        self.abandoned = False  # read by the client under its flight lock
        self.started = False  # set by the client under its flight lock, as it sends the request
        self.done = threading.Event()
        self.response: Optional[Response] = None
        self.error: Optional[BaseException] = None
        self.pid = os.getpid()  # the process whose thread runs it
        # Referenced by the run for the call's duration (ctypes does not keep it alive).
        self._callback = CHUNK_FN(self._on_chunk) if streaming else None
        # A daemon thread, stopped at exit by stop_live_runs (see the module's docstring).
        self._thread = threading.Thread(target=self._main, args=(req,), name="llama_shm request", daemon=True)
        with _live_lock:
            _live.add(self)
        try:
            self._thread.start()
        except BaseException:
            with _live_lock:
                _live.discard(self)
            raise

    def _on_chunk(self, ptr: int, length: int, _user_data: Any) -> None:
        self._deliver(ctypes.string_at(ptr, length).decode("utf-8"))
        if self.abandoned:
            self.cancel()

    def _main(self, req: _Request) -> None:
        try:
            self.response = self._client._call(req, self._callback, self)
        except BaseException as e:  # handed to whoever waits for the run
            self.error = e
        finally:
            with _live_lock:
                _live.discard(self)
        self.done.set()
        self._deliver((self.response, self.error))

    def cancel(self) -> None:
        """Cancels this run's request if it is in flight (never another request's)."""
        self._client._cancel_run(self)

    def abandon(self) -> None:
        """Marks the run abandoned and cancels its request; does not wait."""
        self.abandoned = True
        self.cancel()

    def stop(self) -> None:
        """Abandons the run and waits for its request to end (cancelling every 50 ms); returns
        at once if the request was not sent yet (it then never is)."""
        self.abandon()
        if self.will_never_send():
            return
        while not self.done.wait(_RETRY):
            self.cancel()
        self._thread.join()

    def will_never_send(self) -> bool:
        """After :meth:`abandon`: whether the request was never sent (and never will be)."""
        return self._client._will_never_send(self)

    def kill_worker(self) -> None:
        """SIGKILLs the client's worker (:func:`stop_live_runs`' last resort at exit). A Python
        client never restarts its worker, and the library reaps it only when a call of its
        sees it gone, so while the request is in the library the pid is still the worker's."""
        try:
            os.kill(self._client.worker_pid, signal.SIGKILL)
        except OSError:
            pass


class Stream:
    """The chunks of one streamed request (see :meth:`Client.stream`), iterated by one thread.
    The request runs in a background thread. Breaking out of the loop, ``close()`` (from any
    thread) or leaving a ``with`` block cancels it; ``close()`` also waits for its end."""

    def __init__(self, client: Client, req: _Request) -> None:
        self._queue: queue.Queue[Item] = queue.Queue()
        self._finished = False
        self.response: Optional[Response] = None
        """The whole answer, once the iteration has ended (``None`` before, and when the
        stream was closed before its request started)."""
        self._run = _Run(client, req, self._queue.put, streaming=True)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, str):
            return item
        response, error = item
        self._finished = True
        self._queue.put(item)  # so that a next() on another thread ends too
        if error is not None:
            raise error
        self.response = response
        raise StopIteration

    def close(self) -> None:
        """Cancels the request if it is still running (or keeps it from starting) and waits for
        it to end. May be called from any thread (it touches no native handle itself: it goes
        through :meth:`Client.cancel`). Another thread's request on the client goes on."""
        self._run.stop()
        self.response = self._run.response
        self._finished = True

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped (e.g. `break` out of `for chunk in client.stream(...)`): cancel, don't wait.
        run = getattr(self, "_run", None)
        if run is not None and not run.done.is_set():
            run.abandon()


def _to_loop(loop: asyncio.AbstractEventLoop, put: Callable[[Item], None], runs: List[_Run]) -> Callable[[Item], None]:
    """A ``deliver`` for a run: hands each item to ``put`` on ``loop``'s thread. If the loop
    has been closed, nobody is listening any more: the run (``runs[0]``) is abandoned."""

    def deliver(item: Item) -> None:
        try:
            loop.call_soon_threadsafe(put, item)
        except RuntimeError:  # the event loop is closed
            for run in runs:
                run.abandon()

    return deliver


def _ender(done: asyncio.Future[None], also: Callable[[Item], None]) -> Callable[[Item], None]:
    """``also``, then resolving ``done`` at the run's end (on the loop's thread)."""

    def put(item: Item) -> None:
        also(item)
        if not isinstance(item, str) and not done.done():
            done.set_result(None)

    return put


def _start_on_loop(
    client: Client, req: _Request, put: Callable[[Item], None], streaming: bool
) -> Tuple[_Run, asyncio.Future[None]]:
    """A run whose items reach ``put`` on the running loop, and a future resolved at its end.
    Neither refers to the caller's object, so dropping that object finalises it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    runs: List[_Run] = []
    run = _Run(client, req, _to_loop(loop, _ender(done, put), runs), streaming)
    runs.append(run)
    return run, done


async def _stop(run: _Run, done: asyncio.Future[None]) -> None:
    """:meth:`_Run.stop` for a coroutine: abandons the run and awaits its end, cancelling
    every 50 ms, without blocking the event loop."""
    run.abandon()
    if run.will_never_send():
        return
    while not done.done():
        run.cancel()
        await asyncio.wait({done}, timeout=_RETRY)


class AsyncStream:
    """The chunks of one streamed request for asyncio (see :meth:`Client.astream`):
    ``async for chunk in client.astream(...)``. The request runs on a thread of its own; the
    chunks reach the event loop through ``call_soon_threadsafe``, so the loop never blocks.

    Cancelling the task that iterates (or ``await stream.aclose()``, or leaving an
    ``async with`` block) cancels the request and waits for its end; breaking out of the loop
    cancels it without waiting."""

    def __init__(self, client: Client, req: _Request) -> None:
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._finished = False
        self.response: Optional[Response] = None
        """The whole answer, once the iteration has ended."""
        self._run, self._done = _start_on_loop(client, req, self._queue.put_nowait, streaming=True)

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> str:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if isinstance(item, str):
            return item
        response, error = item
        self._finished = True
        if error is not None:
            raise error
        self.response = response
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancels the request if it is still running and waits (asynchronously) for its end."""
        await _stop(self._run, self._done)
        self.response = self._run.response
        self._finished = True

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped (e.g. `break` out of `async for`): cancel, don't wait.
        run = getattr(self, "_run", None)
        if run is not None and not run.done.is_set():
            run.abandon()


async def ask_async(client: Client, req: _Request) -> Response:
    """:meth:`Client.aask` (and :meth:`Client.achat`): ``lshm_request_with`` (or ``lshm_chat``)
    on a thread of its own; a cancelled task stops the request and waits for its end before
    ``CancelledError`` goes on."""
    run, done = _start_on_loop(client, req, lambda _item: None, streaming=False)
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        await _stop(run, done)
        raise
    if run.error is not None:
        raise run.error
    assert run.response is not None  # abandoned only when cancelled
    return run.response
