"""``Client.attach``: clients of a standalone echo worker that the test starts itself
(``llama-shm-worker --engine echo --prefix P ...``, which answers ``system + "\\n" + user``) and
ends with SIGTERM, checking that it exits 0 and leaves no name behind.

The worker binary is ``$LLAMA_SHM_WORKER`` (a source-tree run), else the one beside the loaded
library (the installed wheel carries both). Prefixes are ``lsp_<tag>_<pid>_<random>``: the
``nothing_left_in_dev_shm`` check (any name holding ``_<pid>_``) covers them too.
"""

import contextlib
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time

import pytest

import llama_shm
from llama_shm import Client

BOUND = 30.0  # seconds: every wait here is bounded


def own_shm_entries():
    needle = "_%d_" % os.getpid()
    return sorted(n for n in os.listdir("/dev/shm") if needle in n)


@pytest.fixture(autouse=True)
def nothing_left_in_dev_shm():
    before = own_shm_entries()
    yield
    assert own_shm_entries() == before


def worker_binary():
    path = os.environ.get("LLAMA_SHM_WORKER")
    if path:
        return path
    beside = os.path.join(os.path.dirname(os.path.realpath(llama_shm.library_path())), "llama-shm-worker")
    if not os.access(beside, os.X_OK):
        pytest.fail("no worker: set LLAMA_SHM_WORKER (%s is not there)" % beside)
    return beside


def names_of(prefix, slots):
    """The entries of /dev/shm of ``prefix`` and of its slots ``prefix.slot1..slots``."""
    prefixes = [prefix] + ["%s.slot%d" % (prefix, k) for k in range(1, slots + 1)]
    return sorted(
        n for n in os.listdir("/dev/shm") for p in prefixes if n.startswith(p + "_") or n.startswith("sem." + p + "_")
    )


class Standalone:
    """A standalone echo worker on a prefix of its own; :meth:`stop` ends it with SIGTERM."""

    def __init__(self, tag, parallel=1, extra=()):
        self.prefix = "lsp_%s_%d_%s" % (tag, os.getpid(), secrets.token_hex(4))
        self.slots = parallel if parallel > 1 else 0
        args = [worker_binary(), "--engine", "echo", "--prefix", self.prefix, "--parallel", str(parallel)]
        self.log = tempfile.TemporaryFile()  # its stderr: a pipe nobody reads could fill up
        self.proc = subprocess.Popen(
            args + list(extra), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log
        )
        # Its names appear once each object is initialised: 5 for the prefix, 4 per slot.
        want = 5 + 4 * self.slots
        deadline = time.monotonic() + BOUND
        while len(self.names()) < want:
            if self.proc.poll() is not None:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")
                self.log.close()
                pytest.fail("the worker exited with %s at start-up: %s" % (self.proc.returncode, err))
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("the worker did not create its %d names in time: %s" % (want, self.names()))
            time.sleep(0.01)

    def names(self):
        return names_of(self.prefix, self.slots)

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=BOUND):
        """Its exit code once it has exited by itself (``None`` if it did not within
        ``timeout``: then it is killed and its names removed)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return None

    def stop(self):
        """SIGTERM (SIGKILL after 10 s); returns its exit code and the names it left, which
        are then removed so that a failed test leaves nothing."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        left = self.names()
        for name in left:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join("/dev/shm", name))
        return self.proc.returncode, left


@contextlib.contextmanager
def standalone(tag, parallel=1, extra=()):
    """A :class:`Standalone` that is stopped however the block ends; when it ends normally,
    the worker must have exited 0 on SIGTERM and left no name."""
    w = Standalone(tag, parallel, extra)
    try:
        yield w
    except BaseException:
        w.stop()
        raise
    code, left = w.stop()
    assert (code, left) == (0, []), "the standalone worker's exit code and the names it left"


def test_attach_gets_exact_answers_from_a_standalone_worker_and_close_detaches():
    with standalone("one") as w:
        with Client.attach(w.prefix, timeout=BOUND) as c:
            assert c.worker_pid == w.proc.pid
            r = c.ask("What is 2+2?", system="You are terse.")
            assert r.text == "You are terse.\nWhat is 2+2?" and r.finish == "stop"
            assert "".join(c.stream("streamed", system="s")) == "s\nstreamed"
        # Leaving `with` detached: the worker serves on, a new client too.
        assert w.alive()
        c2 = Client.attach(w.prefix)
        assert c2.ask("again").text == "\nagain"
        c2.close()
        c2.close()  # idempotent
        with pytest.raises(llama_shm.ClosedError):
            c2.ask("after close")
        assert w.alive()


def test_two_clients_attached_at_once_are_served_at_once_with_their_own_answers():
    # Two slots, and answers of 800 bytes in 4-byte pieces every 2 ms (about 0.4 s each): the
    # two streams must overlap, and each must get exactly its own answer.
    with standalone("two", parallel=2, extra=["--echo-piece-us", "2000"]) as w:
        clients = [Client.attach(w.prefix, timeout=BOUND) for _ in range(2)]
        try:
            users = ["a" * 797, "b" * 797]
            got = [None, None]
            first = [None, None]
            done = [None, None]
            start = threading.Barrier(2)

            def run(i):
                start.wait(BOUND)
                chunks = []
                for chunk in clients[i].stream(users[i], system="s%d" % i):
                    if not chunks:
                        first[i] = time.monotonic()
                    chunks.append(chunk)
                done[i] = time.monotonic()
                got[i] = "".join(chunks)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(BOUND)
                assert not t.is_alive(), "a stream did not end"
            assert got == ["s0\n" + users[0], "s1\n" + users[1]]
            assert first[0] < done[1] and first[1] < done[0], "the two answers were not generated at once"
            # And again one after the other, on the same clients.
            assert clients[0].ask("x", system="0").text == "0\nx"
            assert clients[1].ask("y", system="1").text == "1\ny"
        finally:
            for c in clients:
                c.close()


def test_attach_to_a_prefix_nobody_serves_is_worker_not_running():
    prefix = "lsp_none_%d_%s" % (os.getpid(), secrets.token_hex(4))
    with pytest.raises(llama_shm.WorkerNotRunningError) as e:
        Client.attach(prefix)
    assert e.value.status == 23
    assert prefix in str(e.value)
    assert isinstance(e.value, llama_shm.LlamaShmError)
    assert "WorkerNotRunningError" in llama_shm.__all__
    for bad in ("", "a/b", "has space", "x" * 201):
        with pytest.raises(llama_shm.InvalidArgumentError):
            Client.attach(bad)
    with pytest.raises(llama_shm.InvalidArgumentError):
        Client.attach("nul\0inside")
    with pytest.raises(llama_shm.InvalidArgumentError):
        Client.attach(prefix, max_answer_bytes=0)
    with pytest.raises(ValueError):
        Client.attach(prefix, timeout=0)


def test_a_full_queue_is_a_busy_error_and_nothing_is_sent():
    # One slot and nobody may wait: while a streams a long answer (2000 bytes in 4-byte pieces
    # every 5 ms, 2.5 s), b is told at once that the worker is busy; once a is done, b is served.
    extra = ["--max-queue", "0", "--echo-piece-us", "5000"]
    with standalone("busy", parallel=1, extra=extra) as w:
        with Client.attach(w.prefix, timeout=BOUND) as a, Client.attach(w.prefix, timeout=BOUND) as b:
            long_user = "q" * 1997
            s = a.stream(long_user, system="s")
            it = iter(s)
            chunks = [next(it)]  # a holds the slot now
            t0 = time.monotonic()
            with pytest.raises(llama_shm.BusyError) as e:
                b.ask("turned away")
            assert time.monotonic() - t0 < 1.0, "the busy error was not immediate"
            assert e.value.status == 22
            chunks.extend(it)
            assert "".join(chunks) == "s\n" + long_user
            assert s.response is not None and s.response.text == "s\n" + long_user
            assert b.ask("served now").text == "\nserved now"


def test_shutdown_of_an_attached_client_makes_the_shared_worker_exit():
    w = Standalone("down")
    try:
        c = Client.attach(w.prefix, timeout=BOUND)
        other = Client.attach(w.prefix, timeout=BOUND)
        assert c.ask("last").text == "\nlast"
        c.shutdown()
        code = w.wait()
        assert code == 0, "the worker's exit code after the shutdown"
        assert w.names() == []
        # The other client's worker is gone: it says so, and closing it is quiet.
        with pytest.raises((llama_shm.WorkerDiedError, llama_shm.ClosedError)):
            other.ask("too late")
        other.close()
        with pytest.raises(llama_shm.WorkerNotRunningError):
            Client.attach(w.prefix)
    finally:
        w.stop()
