// ClientOptions: how a client starts its worker and bounds it (the fields of lshm_options, plus
// the worker's path and arguments). A null or zero setting means the library's default. A client
// that attaches to a shared worker (LlamaShmClient.Attach) uses RequestTimeout, MaxAnswerBytes
// and PromptPolicy only.

using System;
using System.Collections.Generic;

namespace LlamaShm
{
    /// <summary>What to do with a prompt that does not fit the wire (4095 bytes per prompt).</summary>
    public enum PromptPolicy
    {
        /// <summary>Cut it on a character boundary (the default, as the seed did).</summary>
        Truncate = 0,
        /// <summary>Refuse it (and a prompt holding a NUL) with <see cref="PromptEncodingException"/>.</summary>
        Strict = 1,
    }

    /// <summary>Restarting a worker that died: up to <see cref="MaxAttempts"/> spawns per outage,
    /// waiting <see cref="Backoff"/> before the second (doubling, at most <see cref="MaxBackoff"/>).</summary>
    public sealed class RestartPolicy
    {
        /// <summary>Spawn attempts per outage (at least 1).</summary>
        public int MaxAttempts { get; set; }

        /// <summary>The wait before the second attempt of an outage (doubles after each).</summary>
        public TimeSpan Backoff { get; set; }

        /// <summary>The longest wait between attempts (at least <see cref="Backoff"/>).</summary>
        public TimeSpan MaxBackoff { get; set; }
    }

    /// <summary>How <see cref="LlamaShmClient.Start"/> spawns and bounds its worker. For
    /// <see cref="LlamaShmClient.Attach"/> only <see cref="RequestTimeout"/>,
    /// <see cref="MaxAnswerBytes"/> and <see cref="PromptPolicy"/> apply; the spawning settings
    /// (<see cref="WorkerPath"/>, <see cref="WorkerArguments"/>, <see cref="StartupTimeout"/>,
    /// <see cref="Restart"/>) are checked but unused: nothing is started, and a shared worker
    /// that dies is not restarted.</summary>
    public sealed class ClientOptions
    {
        /// <summary>The llama-shm-worker binary; null: $LLAMA_SHM_WORKER, else next to
        /// libllama_shm_ffi.so, else next to the executable.</summary>
        public string WorkerPath { get; set; }

        /// <summary>Extra worker arguments, e.g. "--model", "m.gguf", "--greedy" (or "--engine",
        /// "echo" for tests).</summary>
        public IList<string> WorkerArguments { get; private set; }

        /// <summary>How long the worker may take to become ready; null: 120 s.</summary>
        public TimeSpan? StartupTimeout { get; set; }

        /// <summary>Bound on each request (beyond it: <see cref="LlamaShmTimeoutException"/>);
        /// null: 600 s. For an attached client it includes the wait for a free slot of the
        /// shared worker.</summary>
        public TimeSpan? RequestTimeout { get; set; }

        /// <summary>The most bytes one answer may have (beyond it the request is cancelled and
        /// throws <see cref="AnswerTooLongException"/>); null: 8 MiB.</summary>
        public long? MaxAnswerBytes { get; set; }

        /// <summary>What to do with a prompt that does not fit; default Truncate.</summary>
        public PromptPolicy PromptPolicy { get; set; }

        /// <summary>Restart a worker that died; null (the default): never, the client closes.</summary>
        public RestartPolicy Restart { get; set; }

        /// <summary>Options with every setting at the library's default.</summary>
        public ClientOptions()
        {
            WorkerArguments = new List<string>();
        }

        internal NativeMethods.LshmOptions ToNative()
        {
            NativeMethods.LshmOptions o = NativeMethods.lshm_options_default();
            o.prompt_policy = PromptPolicy == PromptPolicy.Strict ? NativeMethods.PolicyStrict : NativeMethods.PolicyTruncate;
            o.startup_timeout_ms = Milliseconds(StartupTimeout, "StartupTimeout");
            o.request_timeout_ms = Milliseconds(RequestTimeout, "RequestTimeout");
            if (MaxAnswerBytes.HasValue)
            {
                if (MaxAnswerBytes.Value <= 0)
                    throw new ArgumentOutOfRangeException("MaxAnswerBytes", MaxAnswerBytes.Value, "must be positive");
                o.max_answer_bytes = (ulong)MaxAnswerBytes.Value;
            }
            if (Restart != null)
            {
                if (Restart.MaxAttempts < 1)
                    throw new ArgumentOutOfRangeException("Restart.MaxAttempts", Restart.MaxAttempts, "must be at least 1");
                o.restart_max_attempts = (uint)Restart.MaxAttempts;
                o.restart_backoff_ms = NonNegativeMs(Restart.Backoff, "Restart.Backoff");
                o.restart_max_backoff_ms = NonNegativeMs(Restart.MaxBackoff, "Restart.MaxBackoff");
            }
            return o;
        }

        /// <summary>A positive duration in whole milliseconds (rounded up), 0 for null.</summary>
        internal static ulong Milliseconds(TimeSpan? t, string name)
        {
            if (!t.HasValue)
                return 0;
            if (t.Value <= TimeSpan.Zero)
                throw new ArgumentOutOfRangeException(name, t.Value, "must be positive (null for the default)");
            return (ulong)Math.Ceiling(t.Value.TotalMilliseconds);
        }

        private static ulong NonNegativeMs(TimeSpan t, string name)
        {
            if (t < TimeSpan.Zero)
                throw new ArgumentOutOfRangeException(name, t, "must not be negative");
            return (ulong)Math.Ceiling(t.TotalMilliseconds);
        }
    }
}
