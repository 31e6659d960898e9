"""The Python client against the echo engine (it answers ``system + "\\n" + user``).

Needs the C library and the worker: ``$LLAMA_SHM_FFI_LIB`` and ``$LLAMA_SHM_WORKER``, or both in
the repository's ``target/release`` (``cargo build --release -p llama-shm-ffi`` and the worker).
Every test checks that nothing of this process is left in /dev/shm (spawned workers' objects
are named ``llama_cpp_<pid>_…`` after the client's pid).
"""

import ctypes
import gc
import os
import signal
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import llama_shm  # noqa: E402
from llama_shm import Client  # noqa: E402

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


def test_cancel_from_another_thread_during_ask():
    with Client(args=SLOW) as c:
        threading.Timer(0.2, c.cancel).start()
        t0 = time.monotonic()
        r = c.ask(LONG_USER)
        assert r.finish == "cancelled"
        assert ("\n" + LONG_USER).startswith(r.text) and len(r.text) < len(LONG_USER)
        assert time.monotonic() - t0 < 1.5


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
        assert r.generated_tokens == 3
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
    k = llama_shm._Canceller(lib, ctypes.c_void_p(0x1234))
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
