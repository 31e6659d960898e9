// LifecycleTests: start-up failures and their types, a worker killed mid-answer, Dispose from
// another thread during a request or while one is starting, Shutdown, a restart policy, and a
// client that is never disposed (its finalizer must not wait for the worker).

using System;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using System.Threading;
using System.Threading.Tasks;
using NUnit.Framework;

namespace LlamaShm.Tests
{
    [TestFixture]
    public class LifecycleTests
    {
        private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
        private static readonly string LongUser = TestWorker.Long(2000);

        [Test, Timeout(60000)]
        public void A_missing_worker_binary_throws_WorkerNotFound()
        {
            var o = TestWorker.Echo();
            o.WorkerPath = "/nonexistent/dir/llama-shm-worker";
            var e = Assert.Throws<WorkerNotFoundException>(() => LlamaShmClient.Start(o));
            Assert.That(e.Status, Is.EqualTo(LshmStatus.WorkerNotFound));
            Assert.That(e, Is.InstanceOf<ILlamaShmError>().And.InstanceOf<LlamaShmClientException>());
            Assert.That(e.Message, Is.StringContaining("/nonexistent/dir/llama-shm-worker"));
        }

        [Test, Timeout(60000)]
        public void A_worker_that_cannot_start_throws_WorkerStartup()
        {
            var o = TestWorker.Echo("--no-such-option");
            var e = Assert.Throws<WorkerStartupException>(() => LlamaShmClient.Start(o));
            Assert.That(e.Status, Is.EqualTo(LshmStatus.Startup));
            var a = Assert.Catch<WorkerStartupException>(() => TestWorker.Within(LlamaShmClient.StartAsync(o), Bound, "StartAsync"));
            Assert.That(a.Status, Is.EqualTo(LshmStatus.Startup));
        }

        [Test, Timeout(60000)]
        public void StartAsync_gives_a_working_client()
        {
            using (var client = TestWorker.Within(LlamaShmClient.StartAsync(TestWorker.Echo()), Bound, "StartAsync"))
                Assert.That(client.SendRequest("u", "s").Text, Is.EqualTo("s\nu"));
        }

        [Test, Timeout(60000)]
        public void A_worker_killed_mid_answer_throws_WorkerDied_then_the_client_is_closed()
        {
            using (var client = TestWorker.Paced(2000))
            {
                int pid = client.WorkerProcessId;
                var first = new ManualResetEventSlim(false);
                Task<Response> t = client.StreamAsync(LongUser, "s", c => first.Set());
                Assert.That(first.Wait(Bound), "streaming started");
                Process.GetProcessById(pid).Kill(); // SIGKILL
                var clock = Stopwatch.StartNew();
                var e = Assert.Catch<WorkerDiedException>(() => TestWorker.Within(t, Bound, "the request whose worker died"));
                Assert.That(e.Status, Is.EqualTo(LshmStatus.WorkerDied));
                // Unnoticed, the request would wait for its timeout (600 s).
                Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(5)), "the death was noticed promptly");
                var closed = Assert.Throws<ClientClosedException>(() => client.SendRequest("again", "s"));
                Assert.That(closed.Status, Is.EqualTo(LshmStatus.Closed));
            }
        }

        [Test, Timeout(60000)]
        public void A_restart_policy_replaces_a_dead_worker()
        {
            var o = TestWorker.Echo();
            o.Restart = new RestartPolicy { MaxAttempts = 3, Backoff = TimeSpan.FromMilliseconds(10), MaxBackoff = TimeSpan.FromMilliseconds(100) };
            using (var client = LlamaShmClient.Start(o))
            {
                int pid = client.WorkerProcessId;
                Assert.That(client.SendRequest("before", "s").Text, Is.EqualTo("s\nbefore"));
                Process.GetProcessById(pid).Kill();
                Assert.That(TestWorker.GoneWithin(pid, Bound), "the worker died");
                Response after = null;
                // The death may surface once (the request it interrupts) before the restart.
                for (int i = 0; i < 2 && after == null; i++)
                {
                    try { after = client.SendRequest("after", "s"); }
                    catch (WorkerDiedException) { }
                }
                Assert.That(after, Is.Not.Null, "a request succeeded after the restart");
                Assert.That(after.Text, Is.EqualTo("s\nafter"));
                Assert.That(client.WorkerProcessId, Is.Not.EqualTo(pid).And.GreaterThan(0));
                Assert.That(TestWorker.Alive(client.WorkerProcessId));
            }
        }

        [Test, Timeout(60000)]
        public void Dispose_from_another_thread_cancels_the_request_and_stops_the_worker()
        {
            // 500 pieces of 40 ms: the answer would take 20 s.
            var client = TestWorker.Paced(40000);
            int pid = client.WorkerProcessId;
            var first = new ManualResetEventSlim(false);
            Task<Response> t = client.StreamAsync(LongUser, "s", c => first.Set());
            Assert.That(first.Wait(Bound), "streaming started");

            var clock = Stopwatch.StartNew();
            Task disposing = Task.Run(() => client.Dispose());
            Assert.That(disposing.Wait(Bound), "Dispose returned");
            Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(5)), "Dispose did not wait for the answer");
            var e = Assert.Catch<OperationCanceledException>(() => TestWorker.Within(t, Bound, "the request of the disposed client"));
            Assert.That(e, Is.InstanceOf<RequestCanceledException>());
            Assert.That(e.Message, Is.StringContaining("disposed"));
            Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(10)), "ended within the shutdown bound");
            Assert.That(TestWorker.GoneWithin(pid, TimeSpan.FromSeconds(10)), "the worker was shut down");

            Assert.Throws<ObjectDisposedException>(() => client.SendRequest("late", "s"));
            Assert.Throws<ObjectDisposedException>(() => client.StreamAsync("late", "s", CancellationToken.None));
            client.Dispose(); // a second Dispose does nothing
            client.Shutdown(); // nor does Shutdown after Dispose
            Assert.That(client.Cancel(), Is.False);
        }

        [Test, Timeout(120000)]
        public void Dispose_while_a_request_starts_cancels_it_or_refuses_it()
        {
            // Dispose on one thread as a request starts on another, at varied offsets: either
            // Dispose sees the request (and cancels it) or the request sees the client disposed
            // (and throws ObjectDisposedException); the answer (20 s) never runs to its end.
            const int runs = 16;
            int cancelled = 0, refused = 0;
            for (int i = 0; i < runs; i++)
            {
                var client = TestWorker.Paced(40000);
                int pid = client.WorkerProcessId;
                var go = new ManualResetEventSlim(false);
                int us = i * 250; // 0 to 3.75 ms after the call
                Task disposing = Task.Factory.StartNew(() => { go.Wait(); TestWorker.SpinFor(us); client.Dispose(); },
                                                       TaskCreationOptions.LongRunning);
                var clock = Stopwatch.StartNew();
                go.Set();
                Task<Response> t;
                try
                {
                    t = client.SendRequestAsync(LongUser, "s");
                }
                catch (ObjectDisposedException)
                {
                    t = null;
                    refused++;
                }
                if (t != null)
                {
                    if (Task.WaitAny(new Task[] { t }, TimeSpan.FromSeconds(15)) < 0)
                        Assert.Fail("run " + i + ": the request of the disposed client did not end within 15 s");
                    Assert.That(t.IsFaulted, "run " + i + ": the request ended without an exception (" + t.Status + ")");
                    Exception e = t.Exception.InnerException;
                    if (e is ObjectDisposedException)
                        refused++;
                    else if (e is RequestCanceledException)
                        cancelled++;
                    else
                        Assert.Fail("run " + i + ": " + e);
                }
                Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(10)), "run " + i + " did not run the answer to its end");
                Assert.That(disposing.Wait(Bound), "Dispose of run " + i + " returned");
                Assert.That(TestWorker.GoneWithin(pid, TimeSpan.FromSeconds(10)), "the worker of run " + i + " was shut down");
            }
            Console.WriteLine("Dispose while a request starts: {0} cancelled, {1} refused", cancelled, refused);
        }

        [Test, Timeout(60000)]
        public void Dispose_and_Shutdown_end_the_worker_before_they_return()
        {
            var disposed = LlamaShmClient.Start(TestWorker.Echo());
            int pid = disposed.WorkerProcessId;
            disposed.SendRequest("u", "s");
            disposed.Dispose();
            Assert.That(TestWorker.Alive(pid), Is.False, "gone when Dispose returned");

            var shut = LlamaShmClient.Start(TestWorker.Echo());
            pid = shut.WorkerProcessId;
            shut.SendRequest("u", "s");
            shut.Shutdown(); // a clean shutdown throws nothing
            Assert.That(TestWorker.Alive(pid), Is.False, "gone when Shutdown returned");
            shut.Shutdown();
            shut.Dispose();
            Assert.Throws<ObjectDisposedException>(() => shut.SendRequest("late", "s"));
        }

        [Test, Timeout(60000)]
        public void A_client_never_disposed_is_finalized_without_blocking_and_its_worker_ends()
        {
            // The client is created, and dropped, on a thread that has ended by the time the
            // collections run, so no stale slot of a live stack (Mono scans stacks
            // conservatively) keeps it reachable. Each pass is bounded: a finalizer that waited
            // for the busy worker would hold WaitForPendingFinalizers for 2.5 s or more.
            int pid = 0;
            WeakReference weak = null;
            Exception failed = null;
            var creator = new Thread(() =>
            {
                try { weak = StartAndDrop(out pid); }
                catch (Exception e) { failed = e; }
            });
            creator.Start();
            creator.Join();
            if (failed != null)
                ExceptionDispatchInfo.Capture(failed).Throw();
            Assert.That(TestWorker.Alive(pid), "running while the client is reachable");
            var clock = Stopwatch.StartNew();
            TimeSpan slowest = TimeSpan.Zero;
            int passes = 0;
            while (weak.IsAlive && passes < 20)
            {
                var pass = Stopwatch.StartNew();
                GC.Collect();
                GC.WaitForPendingFinalizers();
                GC.Collect();
                passes++;
                if (pass.Elapsed > slowest)
                    slowest = pass.Elapsed;
            }
            // Nothing in the library may keep a dropped client reachable (and with its creating
            // thread gone, nothing in the runtime should): else its worker would live on.
            Assert.That(weak.IsAlive, Is.False, "the dropped client was still reachable after " + passes + " collections");
            Assert.That(TestWorker.GoneWithin(pid, TimeSpan.FromSeconds(15)), "the worker ended after finalization");
            Console.WriteLine("collected after {0} pass(es), the slowest {1:F1} ms; the worker ended {2:F1} ms after the first collection",
                              passes, slowest.TotalMilliseconds, clock.Elapsed.TotalMilliseconds);
            Assert.That(slowest, Is.LessThan(TimeSpan.FromMilliseconds(1500)), "the finalizer did not wait for the worker");
        }

        /// <summary>Starts a client whose worker is busy when the client becomes garbage: its
        /// request timed out while the worker sleeps 5 s before answering, so freeing the client
        /// waits (for the turn, then for the worker's exit) for seconds.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static WeakReference StartAndDrop(out int pid)
        {
            var o = TestWorker.Echo("--echo-delay-ms", "5000");
            o.RequestTimeout = TimeSpan.FromMilliseconds(200);
            var client = LlamaShmClient.Start(o);
            Assert.Throws<LlamaShmTimeoutException>(() => client.SendRequest("u", "s"));
            pid = client.WorkerProcessId;
            return new WeakReference(client);
        }
    }
}
