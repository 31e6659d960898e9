// TestWorker: what every fixture needs — the echo worker's options, bounded waits on tasks, and
// process liveness. The worker binary comes from $LLAMA_SHM_WORKER (the Rust runner sets it).
//
// The echo engine answers exactly "{system}\n{user}"; with --echo-piece-us N it sends that in
// pieces of at most 4 bytes, each after a cancellable pause of N µs, counting each piece as one
// token against max_tokens. Expected answers below are built from the prompts by that rule,
// never taken from the client.

using System;
using System.IO;
using System.Linq;
using System.Threading.Tasks;
using NUnit.Framework;

namespace LlamaShm.Tests
{
    internal static class TestWorker
    {
        /// <summary>The worker binary ($LLAMA_SHM_WORKER); fails the test when unset.</summary>
        internal static string Path
        {
            get
            {
                string path = Environment.GetEnvironmentVariable("LLAMA_SHM_WORKER");
                if (string.IsNullOrEmpty(path))
                    Assert.Fail("LLAMA_SHM_WORKER is not set (the path of llama-shm-worker)");
                return path;
            }
        }

        /// <summary>Options for an echo worker with <paramref name="extra"/> arguments.</summary>
        internal static ClientOptions Echo(params string[] extra)
        {
            var o = new ClientOptions { WorkerPath = Path, StartupTimeout = TimeSpan.FromSeconds(20) };
            o.WorkerArguments.Add("--engine");
            o.WorkerArguments.Add("echo");
            foreach (string a in extra)
                o.WorkerArguments.Add(a);
            return o;
        }

        /// <summary>An echo worker that sends ≤4-byte pieces every <paramref name="pieceUs"/> µs.</summary>
        internal static LlamaShmClient Paced(int pieceUs)
        {
            return LlamaShmClient.Start(Echo("--echo-piece-us", pieceUs.ToString()));
        }

        /// <summary>The echo engine's answer to (user, system).</summary>
        internal static string EchoOf(string user, string system)
        {
            return system + "\n" + user;
        }

        /// <summary>A prompt of <paramref name="n"/> ASCII characters (distinct lines, so a
        /// misplaced piece shows).</summary>
        internal static string Long(int n)
        {
            var s = string.Concat(Enumerable.Range(0, n / 8 + 1).Select(i => (i % 100000).ToString("D7") + " "));
            return s.Substring(0, n);
        }

        /// <summary>The task's result (or its own exception, not an AggregateException), failing
        /// the test if it has not completed within <paramref name="limit"/>.</summary>
        internal static T Within<T>(Task<T> task, TimeSpan limit, string what)
        {
            if (Task.WaitAny(new Task[] { task }, limit) < 0)
                Assert.Fail(what + " did not complete within " + limit);
            return task.GetAwaiter().GetResult();
        }

        /// <summary>Whether a process with <paramref name="pid"/> exists and is not a zombie.</summary>
        internal static bool Alive(int pid)
        {
            string stat;
            try
            {
                stat = File.ReadAllText("/proc/" + pid + "/stat");
            }
            catch (IOException)
            {
                return false;
            }
            catch (UnauthorizedAccessException)
            {
                return true;
            }
            // "pid (comm) S ...": the state follows the last ')'.
            string rest = stat.Substring(stat.LastIndexOf(')') + 1).TrimStart();
            return rest.Length > 0 && rest[0] != 'Z' && rest[0] != 'X';
        }

        /// <summary>Busy-waits <paramref name="microseconds"/> µs (finer than Thread.Sleep).</summary>
        internal static void SpinFor(int microseconds)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            long ticks = microseconds * System.Diagnostics.Stopwatch.Frequency / 1000000;
            while (clock.ElapsedTicks < ticks)
                System.Threading.Thread.SpinWait(20);
        }

        /// <summary>Waits up to <paramref name="limit"/> for <paramref name="pid"/> to be gone.</summary>
        internal static bool GoneWithin(int pid, TimeSpan limit)
        {
            DateTime end = DateTime.UtcNow + limit;
            while (Alive(pid))
            {
                if (DateTime.UtcNow >= end)
                    return false;
                System.Threading.Thread.Sleep(5);
            }
            return true;
        }
    }

    /// <summary>An IProgress that records on the reporting thread (Progress&lt;T&gt; would post to
    /// the thread pool, where order is not kept).</summary>
    internal sealed class Recorder : IProgress<string>
    {
        internal readonly System.Collections.Generic.List<string> Chunks = new System.Collections.Generic.List<string>();

        public void Report(string value)
        {
            lock (Chunks)
                Chunks.Add(value);
        }
    }
}
