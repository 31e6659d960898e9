// AttachTests: LlamaShmClient.Attach to a standalone echo worker that each test starts itself
// (llama-shm-worker --engine echo --prefix P ..., the binary of $LLAMA_SHM_WORKER) and ends with
// SIGTERM, requiring that it then exits 0 and leaves no name in /dev/shm: exact answers, Dispose
// that only detaches, two clients served at once by a worker of two slots, a prefix nobody
// serves (WorkerNotRunningException), a full queue (WorkerBusyException), and Shutdown, which
// makes the shared worker exit.
//
// Prefixes are lsc_<tag>_<pid>_<random>: the runner's check of /dev/shm after the suite (names
// holding _<pid>_ of the NUnit process) covers them too.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Threading;
using System.Threading.Tasks;
using NUnit.Framework;

namespace LlamaShm.Tests
{
    /// <summary>A standalone echo worker on a prefix of its own, stopped by SIGTERM.</summary>
    internal sealed class Standalone : IDisposable
    {
        private static readonly Random Rng = new Random();
        private readonly int slots;
        private bool stopped;

        internal readonly string Prefix;
        internal readonly Process Process;

        [DllImport("libc.so.6", SetLastError = true)]
        private static extern int kill(int pid, int sig);

        private const int SIGTERM = 15;

        /// <summary>Starts <c>llama-shm-worker --engine echo --prefix P --parallel N extra...</c>
        /// and waits until all its names exist (each object appears initialised).</summary>
        internal Standalone(string tag, int parallel, params string[] extra)
        {
            int r;
            lock (Rng)
                r = Rng.Next();
            Prefix = "lsc_" + tag + "_" + System.Diagnostics.Process.GetCurrentProcess().Id + "_" + r.ToString("x8");
            slots = parallel > 1 ? parallel : 0;
            var args = new List<string> { "--engine", "echo", "--prefix", Prefix, "--parallel", parallel.ToString() };
            args.AddRange(extra);
            var info = new ProcessStartInfo(TestWorker.Path, string.Join(" ", args))
            {
                UseShellExecute = false,
                RedirectStandardInput = false,
                RedirectStandardOutput = false,
                RedirectStandardError = false,
            };
            Process = System.Diagnostics.Process.Start(info);
            int want = 5 + 4 * slots; // the prefix's five names, four per slot
            DateTime end = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (Names().Count < want)
            {
                if (Process.HasExited)
                    Assert.Fail("the standalone worker exited at start-up with " + Process.ExitCode);
                if (DateTime.UtcNow > end)
                {
                    Stop();
                    Assert.Fail("the standalone worker did not create its " + want + " names in time");
                }
                Thread.Sleep(10);
            }
        }

        /// <summary>The entries of /dev/shm of the prefix and of its slots.</summary>
        internal List<string> Names()
        {
            var prefixes = new List<string> { Prefix };
            for (int k = 1; k <= slots; k++)
                prefixes.Add(Prefix + ".slot" + k);
            return Directory.GetFiles("/dev/shm")
                            .Select(System.IO.Path.GetFileName)
                            .Where(n => prefixes.Any(p => n.StartsWith(p + "_") || n.StartsWith("sem." + p + "_")))
                            .OrderBy(n => n, StringComparer.Ordinal)
                            .ToList();
        }

        internal bool Alive
        {
            get { return !Process.HasExited; }
        }

        /// <summary>SIGTERM (SIGKILL after 10 s); returns the exit code and the names it left,
        /// which are then removed, so a failed test leaves nothing behind.</summary>
        internal int Stop(out List<string> left)
        {
            stopped = true;
            if (!Process.HasExited)
            {
                kill(Process.Id, SIGTERM);
                if (!Process.WaitForExit(10000))
                {
                    Process.Kill();
                    Process.WaitForExit();
                }
            }
            left = Names();
            foreach (string n in left)
            {
                try
                {
                    File.Delete("/dev/shm/" + n);
                }
                catch (IOException)
                {
                }
            }
            return Process.ExitCode;
        }

        private void Stop()
        {
            List<string> left;
            Stop(out left);
        }

        /// <summary>Stops it and requires a clean exit (0, nothing left).</summary>
        internal void StopCleanly()
        {
            List<string> left;
            int code = Stop(out left);
            Assert.That(code, Is.EqualTo(0), "the standalone worker's exit code on SIGTERM");
            Assert.That(left, Is.Empty, "names the standalone worker left in /dev/shm");
        }

        /// <summary>Stops it if the test has not (a failure on the way).</summary>
        public void Dispose()
        {
            if (!stopped)
                Stop();
            Process.Dispose();
        }
    }

    [TestFixture]
    public class AttachTests
    {
        private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

        private static ClientOptions Bounded()
        {
            return new ClientOptions { RequestTimeout = Bound };
        }

        [Test, Timeout(60000)]
        public void Attach_gets_exact_answers_and_Dispose_only_detaches()
        {
            using (var w = new Standalone("one", 1))
            {
                using (var client = LlamaShmClient.Attach(w.Prefix, Bounded()))
                {
                    Assert.That(client.WorkerProcessId, Is.EqualTo(w.Process.Id), "the shared worker's pid");
                    Response r = client.SendRequest("What is 2+2?", "You are terse.");
                    Assert.That(r.Text, Is.EqualTo(TestWorker.EchoOf("What is 2+2?", "You are terse.")));
                    Assert.That(r.Finish, Is.EqualTo(FinishReason.Stop));
                    var pieces = new List<string>();
                    Response s = client.Stream("streamed", "s", pieces.Add);
                    Assert.That(s.Text, Is.EqualTo(TestWorker.EchoOf("streamed", "s")));
                    Assert.That(string.Concat(pieces), Is.EqualTo(s.Text));
                }
                // Dispose detached: the worker still serves, a new client (attached off-thread) too.
                Assert.That(w.Alive, "the shared worker is still running after Dispose");
                using (var again = TestWorker.Within(LlamaShmClient.AttachAsync(w.Prefix), Bound, "AttachAsync"))
                    Assert.That(again.SendRequest("again", "").Text, Is.EqualTo("\nagain"));
                Assert.That(w.Alive, "the shared worker is still running");
                w.StopCleanly();
            }
        }

        [Test, Timeout(60000)]
        public void Two_attached_clients_are_served_at_once_with_their_own_answers()
        {
            // Two slots; answers of 800 bytes in 4-byte pieces every 2 ms (about 0.4 s each):
            // the two streams must overlap, and each must get exactly its own answer.
            using (var w = new Standalone("two", 2, "--echo-piece-us", "2000"))
            using (var a = LlamaShmClient.Attach(w.Prefix, Bounded()))
            using (var b = LlamaShmClient.Attach(w.Prefix, Bounded()))
            {
                string ua = new string('a', 797), ub = new string('b', 797);
                var clock = Stopwatch.StartNew();
                long firstA = -1, firstB = -1;
                Task<Response> ta = a.StreamAsync(ua, "sa", c => Interlocked.CompareExchange(ref firstA, clock.ElapsedTicks, -1));
                Task<Response> tb = b.StreamAsync(ub, "sb", c => Interlocked.CompareExchange(ref firstB, clock.ElapsedTicks, -1));
                Response ra = null, rb = null;
                long doneA = 0, doneB = 0;
                Task wa = ta.ContinueWith(t => doneA = clock.ElapsedTicks, TaskContinuationOptions.ExecuteSynchronously);
                Task wb = tb.ContinueWith(t => doneB = clock.ElapsedTicks, TaskContinuationOptions.ExecuteSynchronously);
                ra = TestWorker.Within(ta, Bound, "a's stream");
                rb = TestWorker.Within(tb, Bound, "b's stream");
                Assert.That(Task.WaitAll(new[] { wa, wb }, Bound), "the completions were recorded");
                Assert.That(ra.Text, Is.EqualTo(TestWorker.EchoOf(ua, "sa")));
                Assert.That(rb.Text, Is.EqualTo(TestWorker.EchoOf(ub, "sb")));
                Assert.That(firstA, Is.LessThan(doneB), "a's answer began before b's ended");
                Assert.That(firstB, Is.LessThan(doneA), "b's answer began before a's ended");
                Assert.That(a.SendRequest("x", "0").Text, Is.EqualTo("0\nx"));
                Assert.That(b.SendRequest("y", "1").Text, Is.EqualTo("1\ny"));
                a.Dispose();
                b.Dispose();
                w.StopCleanly();
            }
        }

        [Test, Timeout(60000)]
        public void Attach_to_a_prefix_nobody_serves_throws_WorkerNotRunning()
        {
            string prefix = "lsc_none_" + Process.GetCurrentProcess().Id + "_" + Guid.NewGuid().ToString("N").Substring(0, 8);
            var e = Assert.Throws<WorkerNotRunningException>(() => LlamaShmClient.Attach(prefix));
            Assert.That(e.Status, Is.EqualTo(LshmStatus.Attach));
            Assert.That((int)e.Status, Is.EqualTo(23));
            Assert.That(e, Is.InstanceOf<LlamaShmClientException>().And.InstanceOf<ILlamaShmError>());
            Assert.That(e.Message, Is.StringContaining(prefix));
            var a = Assert.Catch<WorkerNotRunningException>(
                () => TestWorker.Within(LlamaShmClient.AttachAsync(prefix, Bounded()), Bound, "AttachAsync"));
            Assert.That(a.Status, Is.EqualTo(LshmStatus.Attach));
            foreach (string bad in new[] { "", "a/b", "has space", new string('x', 201) })
            {
                var ae = Assert.Throws<ArgumentException>(() => LlamaShmClient.Attach(bad), bad);
                Assert.That(ae.ParamName, Is.EqualTo("prefix"));
            }
            Assert.Throws<ArgumentNullException>(() => LlamaShmClient.Attach(null));
            Assert.Throws<ArgumentNullException>(() => LlamaShmClient.AttachAsync(null));
            Assert.Throws<ArgumentException>(() => LlamaShmClient.Attach("nul\0inside"));
        }

        [Test, Timeout(60000)]
        public void A_full_queue_throws_WorkerBusy_and_sends_nothing()
        {
            // One slot and nobody may wait: while a streams a long answer (2000 bytes in 4-byte
            // pieces every 5 ms, 2.5 s), b is told at once that the worker is busy; once a is
            // done, b is served.
            using (var w = new Standalone("busy", 1, "--max-queue", "0", "--echo-piece-us", "5000"))
            using (var a = LlamaShmClient.Attach(w.Prefix, Bounded()))
            using (var b = LlamaShmClient.Attach(w.Prefix, Bounded()))
            {
                string longUser = new string('q', 1997);
                var first = new ManualResetEventSlim(false);
                Task<Response> holder = a.StreamAsync(longUser, "s", c => first.Set());
                Assert.That(first.Wait(Bound), "a's answer began (a holds the slot)");
                var clock = Stopwatch.StartNew();
                var e = Assert.Throws<WorkerBusyException>(() => b.SendRequest("turned away", "s"));
                Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(1)), "the busy error came at once");
                Assert.That(e.Status, Is.EqualTo(LshmStatus.Busy));
                Assert.That(holder.IsCompleted, Is.False, "a was still streaming when b was turned away");
                Response r = TestWorker.Within(holder, Bound, "a's stream");
                Assert.That(r.Text, Is.EqualTo(TestWorker.EchoOf(longUser, "s")));
                Assert.That(b.SendRequest("served now", "").Text, Is.EqualTo("\nserved now"));
                a.Dispose();
                b.Dispose();
                w.StopCleanly();
            }
        }

        [Test, Timeout(60000)]
        public void Shutdown_of_an_attached_client_makes_the_shared_worker_exit()
        {
            using (var w = new Standalone("down", 1))
            {
                var client = LlamaShmClient.Attach(w.Prefix, Bounded());
                using (var other = LlamaShmClient.Attach(w.Prefix, Bounded()))
                {
                    Assert.That(client.SendRequest("last", "").Text, Is.EqualTo("\nlast"));
                    client.Shutdown();
                    Assert.That(w.Process.WaitForExit(20000), "the shared worker exited after Shutdown");
                    Assert.That(w.Process.ExitCode, Is.EqualTo(0));
                    Assert.That(w.Names(), Is.Empty, "names left by the worker");
                    // The other client's worker is gone: it says so.
                    var e = Assert.Catch<LlamaShmClientException>(() => other.SendRequest("too late", ""));
                    Assert.That(e, Is.InstanceOf<WorkerDiedException>().Or.InstanceOf<ClientClosedException>());
                }
                Assert.Throws<WorkerNotRunningException>(() => LlamaShmClient.Attach(w.Prefix));
                w.StopCleanly();
            }
        }
    }
}
