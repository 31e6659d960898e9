// LlamaCppLinuxClient: the seed's C# API (Initialize, SendRequest, Shutdown, Dispose) over the
// llama-shm C ABI (libllama_shm_ffi.so, include/llama_shm.h of crates/llama-shm-ffi) instead of
// raw shared memory: the library spawns the worker, waits for it with deadlines, notices its
// death, and leaves nothing in /dev/shm.
//
//   using (var client = new LlamaCppLinuxClient())
//   {
//       client.Initialize("target/release/llama-shm-worker", "--engine", "echo");
//       Console.WriteLine(client.SendRequest("Hello", "Be terse."));   // "Be terse.\nHello"
//       client.Shutdown();
//   }
//
// Mono finds libllama_shm_ffi.so through LD_LIBRARY_PATH (or next to the .exe). Strings cross the
// boundary as NUL-terminated UTF-8 byte arrays, marshalled by hand (C# 7, no LPUTF8Str).

using System;
using System.Runtime.InteropServices;
using System.Text;

namespace LlamaShm
{
    /// <summary>A failed call into the C library: <see cref="Status"/> is its LSHM_E_* code and
    /// the message is the library's.</summary>
    public sealed class LlamaShmException : Exception
    {
        /// <summary>The LSHM_E_* status code (see llama_shm.h).</summary>
        public int Status { get; private set; }

        /// <summary>An exception for <paramref name="status"/> with <paramref name="message"/>.</summary>
        public LlamaShmException(int status, string message) : base(message)
        {
            Status = status;
        }
    }

    /// <summary>The seed's client API on a llama-shm worker spawned through the C ABI.</summary>
    public sealed class LlamaCppLinuxClient : IDisposable
    {
        // Status codes of llama_shm.h (the ones callers are likely to test).
        /// <summary>LSHM_OK: success.</summary>
        public const int LSHM_OK = 0;
        /// <summary>LSHM_E_INVALID_ARGUMENT: a bad argument.</summary>
        public const int LSHM_E_INVALID_ARGUMENT = 1;
        /// <summary>LSHM_E_WORKER_NOT_FOUND: no worker binary at the path.</summary>
        public const int LSHM_E_WORKER_NOT_FOUND = 5;
        /// <summary>LSHM_E_STARTUP: the worker could not start.</summary>
        public const int LSHM_E_STARTUP = 6;
        /// <summary>LSHM_E_TIMEOUT: the request timeout passed.</summary>
        public const int LSHM_E_TIMEOUT = 8;
        /// <summary>LSHM_E_WORKER_DIED: the worker died during the request.</summary>
        public const int LSHM_E_WORKER_DIED = 9;
        /// <summary>LSHM_E_CLOSED: the client is closed.</summary>
        public const int LSHM_E_CLOSED = 18;

        private const string Lib = "llama_shm_ffi";

        [StructLayout(LayoutKind.Sequential)]
        private struct LshmResponse
        {
            public IntPtr text;
            public UIntPtr text_len;
            public uint finish;
            public uint truncated;
            public ulong seq;
            public uint prompt_tokens;
            public uint generated_tokens;
            public ulong prompt_time_us;
            public ulong generation_time_us;
            public uint cached_tokens;
            public uint reserved;
        }

        [DllImport(Lib)]
        private static extern IntPtr lshm_status_message(int code);

        [DllImport(Lib)]
        private static extern int lshm_client_new(byte[] worker, IntPtr[] argv, UIntPtr argc, ulong requestTimeoutMs,
                                                  out IntPtr client, out IntPtr error);

        [DllImport(Lib)]
        private static extern int lshm_client_worker_pid(IntPtr client, out uint pid);

        [DllImport(Lib)]
        private static extern int lshm_client_set_max_answer_bytes(IntPtr client, ulong maxBytes);

        [DllImport(Lib)]
        private static extern int lshm_request(IntPtr client, byte[] user, byte[] system, ulong deadlineMs,
                                               uint maxTokens, out LshmResponse response, out IntPtr error);

        [DllImport(Lib)]
        private static extern void lshm_response_free(ref LshmResponse response);

        [DllImport(Lib)]
        private static extern int lshm_client_shutdown(IntPtr client, out IntPtr error);

        [DllImport(Lib)]
        private static extern void lshm_client_free(IntPtr client);

        [DllImport(Lib)]
        private static extern void lshm_string_free(IntPtr s);

        private readonly object sync = new object();
        private IntPtr client = IntPtr.Zero;
        private bool disposed;

        /// <summary>Bound on each request; zero (the default) means the library's 600 s. Set it
        /// before <see cref="Initialize(string)"/>.</summary>
        public TimeSpan RequestTimeout { get; set; }

        /// <summary>The most bytes one answer may have (0: the library's 8 MiB). A worker that
        /// goes on past it (an endless answer) is cancelled and the request throws
        /// <see cref="LlamaShmException"/> with status 21 (LSHM_E_ANSWER_TOO_LONG). Set before
        /// Initialize.</summary>
        public ulong MaxAnswerBytes { get; set; }

        /// <summary>The worker's process id (0 before Initialize).</summary>
        public uint WorkerPid { get; private set; }

        /// <summary>Starts the worker at <paramref name="chatbotPath"/> (the seed's signature) and
        /// waits until it is ready. Throws <see cref="LlamaShmException"/> if it cannot start.</summary>
        public void Initialize(string chatbotPath)
        {
            Initialize(chatbotPath, new string[0]);
        }

        /// <summary>Initialize with extra worker arguments, e.g. "--engine", "echo" or
        /// "--model", "m.gguf", "--greedy". A null path uses the library's default worker.</summary>
        public void Initialize(string chatbotPath, params string[] workerArgs)
        {
            lock (sync)
            {
                if (disposed)
                    throw new ObjectDisposedException("LlamaCppLinuxClient");
                if (client != IntPtr.Zero)
                    throw new InvalidOperationException("already initialized");
                workerArgs = workerArgs ?? new string[0];
                var argv = new IntPtr[workerArgs.Length];
                try
                {
                    for (int i = 0; i < workerArgs.Length; i++)
                    {
                        byte[] arg = Utf8z(workerArgs[i], "workerArgs[" + i + "]");
                        argv[i] = Marshal.AllocHGlobal(arg.Length);
                        Marshal.Copy(arg, 0, argv[i], arg.Length);
                    }
                    IntPtr handle, error;
                    ulong timeoutMs = (ulong)Math.Max(0, Math.Ceiling(RequestTimeout.TotalMilliseconds));
                    int status = lshm_client_new(chatbotPath == null ? null : Utf8z(chatbotPath, "chatbotPath"),
                                                 argv, new UIntPtr((uint)argv.Length), timeoutMs, out handle, out error);
                    Check(status, error);
                    if (MaxAnswerBytes > 0)
                    {
                        int set = lshm_client_set_max_answer_bytes(handle, MaxAnswerBytes);
                        if (set != LSHM_OK)
                        {
                            lshm_client_free(handle);
                            Check(set, IntPtr.Zero);
                        }
                    }
                    client = handle;
                    uint pid;
                    if (lshm_client_worker_pid(handle, out pid) == LSHM_OK)
                        WorkerPid = pid;
                }
                finally
                {
                    foreach (IntPtr p in argv)
                        if (p != IntPtr.Zero)
                            Marshal.FreeHGlobal(p);
                }
            }
        }

        /// <summary>Sends one request and returns the whole answer. Throws
        /// <see cref="LlamaShmException"/> (timeout, worker died, closed, ...) on failure.</summary>
        public string SendRequest(string userPrompt, string systemPrompt)
        {
            byte[] user = Utf8z(userPrompt, "userPrompt");
            byte[] system = Utf8z(systemPrompt ?? "", "systemPrompt");
            lock (sync)
            {
                if (disposed)
                    throw new ObjectDisposedException("LlamaCppLinuxClient");
                if (client == IntPtr.Zero)
                    throw new InvalidOperationException("not initialized (call Initialize first)");
                LshmResponse response;
                IntPtr error;
                int status = lshm_request(client, user, system, 0, 0, out response, out error);
                try
                {
                    Check(status, error);
                    int len = checked((int)response.text_len.ToUInt64());
                    var bytes = new byte[len];
                    if (len > 0)
                        Marshal.Copy(response.text, bytes, 0, len);
                    return Encoding.UTF8.GetString(bytes);
                }
                finally
                {
                    lshm_response_free(ref response);
                }
            }
        }

        /// <summary>Shuts the worker down in order (bounded; it is killed if it does not exit)
        /// and releases the client. Throws <see cref="LlamaShmException"/> if the shutdown was
        /// not clean; the client is released either way. A second call does nothing.</summary>
        public void Shutdown()
        {
            lock (sync)
            {
                if (client == IntPtr.Zero)
                    return;
                IntPtr handle = client;
                client = IntPtr.Zero;
                IntPtr error;
                Check(lshm_client_shutdown(handle, out error), error);
            }
        }

        /// <summary>Releases the client; shuts the worker down if Shutdown was not called. Never
        /// throws.</summary>
        public void Dispose()
        {
            lock (sync)
            {
                if (disposed)
                    return;
                disposed = true;
                if (client != IntPtr.Zero)
                {
                    lshm_client_free(client);
                    client = IntPtr.Zero;
                }
            }
            GC.SuppressFinalize(this);
        }

        /// <summary>A client that was not disposed: lshm_client_free shuts the worker down and
        /// can wait for it (seconds), which a finalizer must not, so the free runs on a
        /// thread-pool thread.</summary>
        ~LlamaCppLinuxClient()
        {
            IntPtr leaked = client;
            if (leaked != IntPtr.Zero)
            {
                try
                {
                    System.Threading.ThreadPool.UnsafeQueueUserWorkItem(p => lshm_client_free((IntPtr)p), leaked);
                }
                catch (Exception)
                {
                    // The runtime is going down: the worker exits when this process's control
                    // socket hangs up.
                }
            }
        }

        private static byte[] Utf8z(string s, string what)
        {
            if (s == null)
                throw new ArgumentNullException(what);
            if (s.IndexOf('\0') >= 0)
                throw new ArgumentException(what + " contains a NUL character", what);
            var utf8 = new UTF8Encoding(false, true); // throws on lone surrogates
            int n = utf8.GetByteCount(s);
            var bytes = new byte[n + 1];
            utf8.GetBytes(s, 0, s.Length, bytes, 0);
            return bytes;
        }

        private static string FromUtf8z(IntPtr p)
        {
            int len = 0;
            while (Marshal.ReadByte(p, len) != 0)
                len++;
            var bytes = new byte[len];
            Marshal.Copy(p, bytes, 0, len);
            return Encoding.UTF8.GetString(bytes);
        }

        private static void Check(int status, IntPtr error)
        {
            string message = null;
            if (error != IntPtr.Zero)
            {
                message = FromUtf8z(error);
                lshm_string_free(error);
            }
            if (status == LSHM_OK)
                return;
            throw new LlamaShmException(status, message ?? FromUtf8z(lshm_status_message(status)));
        }
    }
}
