"""The Python client against the echo engine (it answers ``system + "\\n" + user``).

Needs the C library and the worker: ``$LLAMA_SHM_FFI_LIB`` and ``$LLAMA_SHM_WORKER``, or both in
the repository's ``target/release`` (``cargo build --release -p llama-shm-ffi`` and the worker).
Every test checks that nothing of this process is left in /dev/shm (spawned workers' objects
are named ``llama_cpp_<pid>_…`` after the client's pid).
"""

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
