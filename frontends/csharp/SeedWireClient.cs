// SeedWireClient: a C# client of the llama-shm / seed wire that P/Invokes libc directly, the way
// the seed's LlamaCppLinuxClient does (shm_open, mmap, sem_open, sem_wait, sem_post, munmap,
// close, sem_close), on the seed's names and offsets:
//
//   /<prefix>_shared_mem              system_prompt @0 (4096), user_prompt @4096 (4096),
//                                     response @8192 (32768), shutdown_requested @40960 (1)
//   /<prefix>_sem_ready               posted by the worker when it is ready for a request
//   /<prefix>_sem_prompts_written     posted by the client when the prompts are written
//   /<prefix>_sem_response_written    posted by the worker when the response is written
//
// The seed's defects are fixed here:
//   * the whole 40961-byte region is mapped (the object's size is checked first);
//   * every wait is a sem_timedwait with an absolute CLOCK_REALTIME deadline, retried on EINTR;
//     a timeout is a TimeoutException naming the step;
//   * no fixed sleep before connecting: opening the objects is retried until a deadline;
//   * prompts are truncated at a UTF-8 character boundary (at most 4095 bytes, NUL-terminated),
//     never in the middle of a character;
//   * the response is decoded as UTF-8 up to its first NUL.
//
// C# 7 (Mono's mcs). glibc >= 2.34 has shm_open and sem_open in libc.so.6.

using System;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;

namespace LlamaShm
{
    public sealed class SeedWireClient : IDisposable
    {
        // --- The seed's layout -----------------------------------------------------------------
        public const int SystemOffset = 0;
        public const int UserOffset = 4096;
        public const int PromptSize = 4096;
        public const int ResponseOffset = 8192;
        public const int ResponseSize = 32768;
        public const int ShutdownOffset = 40960;
        public const int TotalSize = 40961;
        /// <summary>Longest prompt in bytes: the field keeps one byte for the NUL.</summary>
        public const int MaxPromptBytes = PromptSize - 1;

        // --- libc ------------------------------------------------------------------------------
        private const string Libc = "libc.so.6";
        private const int O_RDWR = 2;
        private const int PROT_READ = 1;
        private const int PROT_WRITE = 2;
        private const int MAP_SHARED = 1;
        private const int SEEK_END = 2;
        private const int CLOCK_REALTIME = 0;
        private const int ENOENT = 2;
        private const int EINTR = 4;
        private const int EACCES = 13;
        private const int ETIMEDOUT = 110;
        private static readonly IntPtr MAP_FAILED = new IntPtr(-1);
        // glibc: #define SEM_FAILED ((sem_t *) 0)
        private static readonly IntPtr SEM_FAILED = IntPtr.Zero;

        [StructLayout(LayoutKind.Sequential)]
        private struct Timespec
        {
            public long tv_sec; // time_t: 64-bit on x86_64 and aarch64
            public long tv_nsec; // long
        }

        [DllImport(Libc, SetLastError = true)]
        private static extern int shm_open(string name, int oflag, uint mode);

        [DllImport(Libc, SetLastError = true)]
        private static extern IntPtr mmap(IntPtr addr, UIntPtr length, int prot, int flags, int fd, IntPtr offset);

        [DllImport(Libc, SetLastError = true)]
        private static extern int munmap(IntPtr addr, UIntPtr length);

        [DllImport(Libc, SetLastError = true)]
        private static extern int close(int fd);

        [DllImport(Libc, SetLastError = true)]
        private static extern long lseek(int fd, long offset, int whence);

        [DllImport(Libc, SetLastError = true)]
        private static extern IntPtr sem_open(string name, int oflag);

        [DllImport(Libc, SetLastError = true)]
        private static extern int sem_timedwait(IntPtr sem, ref Timespec absTimeout);

        [DllImport(Libc, SetLastError = true)]
        private static extern int sem_post(IntPtr sem);

        [DllImport(Libc, SetLastError = true)]
        private static extern int sem_close(IntPtr sem);

        [DllImport(Libc, SetLastError = true)]
        private static extern int clock_gettime(int clockId, out Timespec tp);

        [DllImport(Libc)]
        private static extern IntPtr strerror(int errnum);

        // --- State -----------------------------------------------------------------------------
        private readonly string prefix;
        private readonly string shmName;
        private readonly string semReadyName;
        private readonly string semPromptsName;
        private readonly string semResponseName;
        private int fd = -1;
        private IntPtr mem = IntPtr.Zero;
        private IntPtr semReady = SEM_FAILED;
        private IntPtr semPrompts = SEM_FAILED;
        private IntPtr semResponse = SEM_FAILED;
        private bool disposed;

        public SeedWireClient(string prefix = "llama_cpp")
        {
            if (string.IsNullOrEmpty(prefix) || prefix.IndexOf('/') >= 0 || prefix.IndexOf('\0') >= 0)
                throw new ArgumentException("prefix must be non-empty and contain no '/' or NUL", "prefix");
            this.prefix = prefix;
            shmName = "/" + prefix + "_shared_mem";
            semReadyName = "/" + prefix + "_sem_ready";
            semPromptsName = "/" + prefix + "_sem_prompts_written";
            semResponseName = "/" + prefix + "_sem_response_written";
        }

        public string Prefix { get { return prefix; } }

        public bool IsConnected { get { return mem != IntPtr.Zero; } }

        /// <summary>
        /// Opens and maps the worker's objects, retrying (every 10 ms) while they do not exist
        /// yet or the object is still smaller than 40961 bytes, until <paramref name="timeout"/>.
        /// </summary>
        public void Connect(TimeSpan timeout)
        {
            ThrowIfDisposed();
            if (IsConnected)
                throw new InvalidOperationException("already connected");
            var clock = Stopwatch.StartNew();
            string lastProblem = "nothing tried";
            while (true)
            {
                string problem = TryOpenAll();
                if (problem == null)
                    return;
                lastProblem = problem;
                CloseAll();
                if (clock.Elapsed >= timeout)
                    throw new TimeoutException(string.Format(
                        "connect to prefix '{0}': objects not usable after {1:F1} s: {2}",
                        prefix, timeout.TotalSeconds, lastProblem));
                Thread.Sleep(10);
            }
        }

        /// <summary>Null on success, else why the objects are not (yet) usable.</summary>
        private string TryOpenAll()
        {
            fd = shm_open(shmName, O_RDWR, 0);
            if (fd < 0)
                return Describe("shm_open " + shmName, Marshal.GetLastWin32Error());
            long size = lseek(fd, 0, SEEK_END);
            if (size < 0)
                return Describe("lseek " + shmName, Marshal.GetLastWin32Error());
            if (size < TotalSize)
                return string.Format("{0} is {1} bytes, fewer than {2} (not initialised yet?)",
                    shmName, size, TotalSize);
            IntPtr p = mmap(IntPtr.Zero, new UIntPtr((uint)TotalSize), PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                IntPtr.Zero);
            if (p == MAP_FAILED)
                return Describe("mmap " + shmName, Marshal.GetLastWin32Error());
            mem = p;
            // The mapping keeps the object; the descriptor is not needed any more.
            close(fd);
            fd = -1;
            semReady = sem_open(semReadyName, 0);
            if (semReady == SEM_FAILED)
                return Describe("sem_open " + semReadyName, Marshal.GetLastWin32Error());
            semPrompts = sem_open(semPromptsName, 0);
            if (semPrompts == SEM_FAILED)
                return Describe("sem_open " + semPromptsName, Marshal.GetLastWin32Error());
            semResponse = sem_open(semResponseName, 0);
            if (semResponse == SEM_FAILED)
                return Describe("sem_open " + semResponseName, Marshal.GetLastWin32Error());
            return null;
        }

        /// <summary>
        /// One request: waits for ready, writes both prompts (each cut at a character boundary
        /// to at most 4095 UTF-8 bytes, NUL-terminated) and a zero shutdown byte, posts
        /// prompts_written, waits for response_written and returns the response up to its first
        /// NUL. <paramref name="timeout"/> bounds the whole request.
        /// </summary>
        public string SendRequest(string userPrompt, string systemPrompt, TimeSpan timeout)
        {
            ThrowIfNotConnected();
            var clock = Stopwatch.StartNew();
            Wait(semReady, "waiting for the worker to be ready (sem_ready)", clock, timeout);
            WritePrompt(SystemOffset, systemPrompt ?? "");
            WritePrompt(UserOffset, userPrompt ?? "");
            Marshal.WriteByte(mem, ShutdownOffset, 0);
            Post(semPrompts, semPromptsName);
            Wait(semResponse, "waiting for the response (sem_response_written)", clock, timeout);
            return ReadResponse();
        }

        /// <summary>
        /// Asks the worker to exit, as the seed does: waits for ready, sets shutdown_requested
        /// to 1 and posts prompts_written. The worker then exits and removes its names.
        /// </summary>
        public void Shutdown(TimeSpan timeout)
        {
            ThrowIfNotConnected();
            var clock = Stopwatch.StartNew();
            Wait(semReady, "waiting for the worker to be ready before shutdown (sem_ready)", clock, timeout);
            Marshal.WriteByte(mem, ShutdownOffset, 1);
            Post(semPrompts, semPromptsName);
        }

        /// <summary>
        /// The longest prefix of <paramref name="s"/> whose UTF-8 encoding fits in
        /// <paramref name="maxBytes"/>, cut between characters (never inside a surrogate pair);
        /// an interior NUL ends the text (it would end it on the wire anyway).
        /// </summary>
        public static byte[] EncodeTruncated(string s, int maxBytes)
        {
            int nul = s.IndexOf('\0');
            if (nul >= 0)
                s = s.Substring(0, nul);
            var utf8 = new UTF8Encoding(false, false);
            byte[] all = utf8.GetBytes(s);
            if (all.Length <= maxBytes)
                return all;
            // Back off to the start of the character that crosses the limit: UTF-8 continuation
            // bytes are 10xxxxxx. A lone surrogate was encoded as U+FFFD (3 bytes), also whole.
            int cut = maxBytes;
            while (cut > 0 && (all[cut] & 0xC0) == 0x80)
                cut--;
            var result = new byte[cut];
            Buffer.BlockCopy(all, 0, result, 0, cut);
            return result;
        }

        private void WritePrompt(int offset, string text)
        {
            byte[] bytes = EncodeTruncated(text, MaxPromptBytes);
            // The whole field: the text, then zeros (the NUL and the rest of the old prompt).
            var field = new byte[PromptSize];
            Buffer.BlockCopy(bytes, 0, field, 0, bytes.Length);
            Marshal.Copy(field, 0, IntPtr.Add(mem, offset), PromptSize);
        }

        private string ReadResponse()
        {
            var buf = new byte[ResponseSize];
            Marshal.Copy(IntPtr.Add(mem, ResponseOffset), buf, 0, ResponseSize);
            int len = Array.IndexOf(buf, (byte)0);
            if (len < 0)
                len = ResponseSize;
            return new UTF8Encoding(false, false).GetString(buf, 0, len);
        }

        private void Wait(IntPtr sem, string step, Stopwatch clock, TimeSpan timeout)
        {
            while (true)
            {
                TimeSpan left = timeout - clock.Elapsed;
                if (left < TimeSpan.Zero)
                    left = TimeSpan.Zero;
                Timespec now;
                if (clock_gettime(CLOCK_REALTIME, out now) != 0)
                    throw new InvalidOperationException(Describe("clock_gettime", Marshal.GetLastWin32Error()));
                long ns = now.tv_nsec + (left.Ticks % TimeSpan.TicksPerSecond) * 100;
                var abs = new Timespec
                {
                    tv_sec = now.tv_sec + left.Ticks / TimeSpan.TicksPerSecond + ns / 1000000000L,
                    tv_nsec = ns % 1000000000L,
                };
                if (sem_timedwait(sem, ref abs) == 0)
                    return;
                int errno = Marshal.GetLastWin32Error();
                if (errno == EINTR)
                    continue;
                if (errno == ETIMEDOUT)
                    throw new TimeoutException(string.Format("{0}: timed out after {1:F1} s (prefix '{2}')",
                        step, timeout.TotalSeconds, prefix));
                throw new InvalidOperationException(Describe("sem_timedwait, " + step, errno));
            }
        }

        private static void Post(IntPtr sem, string name)
        {
            if (sem_post(sem) != 0)
                throw new InvalidOperationException(Describe("sem_post " + name, Marshal.GetLastWin32Error()));
        }

        private static string Describe(string what, int errno)
        {
            string text = Marshal.PtrToStringAnsi(strerror(errno));
            return string.Format("{0}: {1} (errno {2})", what, text, errno);
        }

        private void ThrowIfDisposed()
        {
            if (disposed)
                throw new ObjectDisposedException("SeedWireClient");
        }

        private void ThrowIfNotConnected()
        {
            ThrowIfDisposed();
            if (!IsConnected)
                throw new InvalidOperationException("not connected: call Connect first");
        }

        private void CloseAll()
        {
            if (mem != IntPtr.Zero)
            {
                munmap(mem, new UIntPtr((uint)TotalSize));
                mem = IntPtr.Zero;
            }
            if (fd >= 0)
            {
                close(fd);
                fd = -1;
            }
            if (semReady != SEM_FAILED)
            {
                sem_close(semReady);
                semReady = SEM_FAILED;
            }
            if (semPrompts != SEM_FAILED)
            {
                sem_close(semPrompts);
                semPrompts = SEM_FAILED;
            }
            if (semResponse != SEM_FAILED)
            {
                sem_close(semResponse);
                semResponse = SEM_FAILED;
            }
        }

        /// <summary>
        /// Unmaps and closes everything. The names belong to the worker (it removes them when it
        /// exits), so nothing is unlinked here.
        /// </summary>
        public void Dispose()
        {
            if (disposed)
                return;
            CloseAll();
            disposed = true;
            GC.SuppressFinalize(this);
        }

        ~SeedWireClient()
        {
            CloseAll();
        }
    }
}
