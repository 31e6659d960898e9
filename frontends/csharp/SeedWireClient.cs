// SeedWireClient: a C# client of the llama-shm / seed wire that P/Invokes libc directly, the way
// the seed's LlamaCppLinuxClient does, on the seed's names and offsets:
//
//   /<prefix>_shared_mem              system_prompt @0 (4096), user_prompt @4096 (4096),
//                                     response @8192 (32768), shutdown_requested @40960 (1)
//   /<prefix>_sem_ready               posted by the worker when it is ready for a request
//   /<prefix>_sem_prompts_written     posted by the client when the prompts are written
//   /<prefix>_sem_response_written    posted by the worker when the response is written
//
// The seed's defects are fixed here:
//   * every object is vetted before it is used, as the Rust client does: fstat on the descriptor
//     that is then mapped must show a regular file owned by our effective uid, with no permission
//     bit beyond the trusted mode (default 0600), and at least the bytes the layout needs;
//     otherwise a SeedWireRefusedException names the object and why;
//   * the semaphores are not opened with sem_open (which reopens the name after any check we
//     could make): their glibc backing files /dev/shm/sem.<name> are opened with open(2)
//     (O_NOFOLLOW), fstat-ed and mapped through that same descriptor, and the mapped sem_t is
//     used with sem_post / sem_timedwait / sem_trywait;
//   * the whole 40961-byte region is mapped (the object's size is checked first);
//   * every wait is a sem_timedwait with an absolute CLOCK_REALTIME deadline, retried on EINTR;
//     a timeout is a TimeoutException naming the step;
//   * a request that fails after taking the turn (above all: times out waiting for its answer)
//     closes the client: the seed's wire has no sequence numbers, so the late answer could not be
//     told from the next one; later calls throw SeedWireClosedException naming why;
//   * a response_written left over by another client that stopped waiting is drained after
//     taking the turn, so the answer read is the one to this request;
//   * no fixed sleep before connecting: opening the objects is retried until a deadline;
//   * prompts are truncated at a UTF-8 character boundary (at most 4095 bytes, NUL-terminated),
//     never in the middle of a character;
//   * the response is decoded as UTF-8 up to its first NUL.
//
// C# 7 (Mono's mcs). Linux with glibc >= 2.34 (shm_open and the semaphores in libc.so.6; fstat
// exported since 2.33, __fxstat before), on x86_64 or aarch64 (the struct stat layout and the
// O_NOFOLLOW value are per architecture; other platforms get PlatformNotSupportedException).

using System;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;

namespace LlamaShm
{
    /// <summary>Why an object of the wire was refused.</summary>
    public enum SeedWireRefusal
    {
        /// <summary>Owned by another user than our effective uid.</summary>
        WrongOwner,
        /// <summary>Its permission bits grant more than the trusted mode.</summary>
        WrongMode,
        /// <summary>Smaller than the layout needs: touching the missing bytes would fault.</summary>
        TooSmall,
        /// <summary>Not a regular file (a device, a FIFO, ...).</summary>
        NotRegularFile,
    }

    /// <summary>
    /// An object of the wire failed vetting: it belongs to another user, grants more than the
    /// trusted mode, is too small or is not a regular file. Nothing of it was used.
    /// </summary>
    public sealed class SeedWireRefusedException : Exception
    {
        public SeedWireRefusedException(SeedWireRefusal reason, string objectName, string message, uint owner,
            uint me, int mode, int allowedMode, long size, long neededSize)
            : base(message)
        {
            Reason = reason;
            ObjectName = objectName;
            Owner = owner;
            Me = me;
            Mode = mode;
            AllowedMode = allowedMode;
            Size = size;
            NeededSize = neededSize;
        }

        public SeedWireRefusal Reason { get; private set; }
        /// <summary>The object's name (and, for a semaphore, its backing file).</summary>
        public string ObjectName { get; private set; }
        /// <summary>The object's owner (uid).</summary>
        public uint Owner { get; private set; }
        /// <summary>Our effective uid.</summary>
        public uint Me { get; private set; }
        /// <summary>The object's permission bits (mode &amp; 07777).</summary>
        public int Mode { get; private set; }
        /// <summary>The widest mode trusted.</summary>
        public int AllowedMode { get; private set; }
        /// <summary>The object's size in bytes.</summary>
        public long Size { get; private set; }
        /// <summary>The bytes the layout needs.</summary>
        public long NeededSize { get; private set; }
    }

    /// <summary>
    /// The client was shut down, or an earlier failure left it unusable; <see cref="Reason"/>
    /// says which. A new client (after Connect) can talk to the same worker.
    /// </summary>
    public sealed class SeedWireClosedException : InvalidOperationException
    {
        public SeedWireClosedException(string reason)
            : base("client is closed: " + reason)
        {
            Reason = reason;
        }

        public string Reason { get; private set; }
    }

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

        /// <summary>The widest mode trusted by default: owner read and write (0600).</summary>
        public const int DefaultTrustedMode = 0x180; // 0600

        // --- libc ------------------------------------------------------------------------------
        private const string Libc = "libc.so.6";
        private const int O_RDWR = 2;
        private const int O_CLOEXEC = 0x80000; // 02000000 on x86_64 and aarch64
        private const int PROT_READ = 1;
        private const int PROT_WRITE = 2;
        private const int MAP_SHARED = 1;
        private const int CLOCK_REALTIME = 0;
        private const int EINTR = 4;
        private const int EAGAIN = 11;
        private const int ETIMEDOUT = 110;
        private const int S_IFMT = 0xF000; // 0170000
        private const int S_IFREG = 0x8000; // 0100000
        private static readonly IntPtr MAP_FAILED = new IntPtr(-1);

        [StructLayout(LayoutKind.Sequential)]
        private struct Timespec
        {
            public long tv_sec; // time_t: 64-bit on x86_64 and aarch64
            public long tv_nsec; // long
        }

        /// <summary>What differs between the supported architectures: the offsets of st_mode,
        /// st_uid and st_size in glibc's struct stat, O_NOFOLLOW, and __fxstat's version
        /// argument (for glibc &lt; 2.33, which exports no fstat symbol).</summary>
        private sealed class Abi
        {
            public int ModeOffset;
            public int UidOffset;
            public int SizeOffset;
            public int ONofollow;
            public int StatVer;
            public int SemSize; // sizeof(sem_t)
        }

        // Larger than struct stat on every supported architecture (144 bytes on x86_64, 128 on
        // aarch64): the call writes the whole struct into it.
        private const int StatBufferSize = 256;

        [DllImport(Libc, SetLastError = true)]
        private static extern int shm_open(string name, int oflag, uint mode);

        [DllImport(Libc, EntryPoint = "open", SetLastError = true)]
        private static extern int open_file(string path, int flags);

        [DllImport(Libc, EntryPoint = "fstat", SetLastError = true)]
        private static extern int fstat_fd(int fd, [Out] byte[] statBuf);

        [DllImport(Libc, EntryPoint = "__fxstat", SetLastError = true)]
        private static extern int fxstat_fd(int ver, int fd, [Out] byte[] statBuf);

        [DllImport(Libc)]
        private static extern uint geteuid();

        [DllImport(Libc, SetLastError = true)]
        private static extern int uname([Out] byte[] buf);

        [DllImport(Libc, SetLastError = true)]
        private static extern IntPtr mmap(IntPtr addr, UIntPtr length, int prot, int flags, int fd, IntPtr offset);

        [DllImport(Libc, SetLastError = true)]
        private static extern int munmap(IntPtr addr, UIntPtr length);

        [DllImport(Libc, SetLastError = true)]
        private static extern int close(int fd);

        [DllImport(Libc, SetLastError = true)]
        private static extern int sem_timedwait(IntPtr sem, ref Timespec absTimeout);

        [DllImport(Libc, SetLastError = true)]
        private static extern int sem_trywait(IntPtr sem);

        [DllImport(Libc, SetLastError = true)]
        private static extern int sem_post(IntPtr sem);

        [DllImport(Libc, SetLastError = true)]
        private static extern int clock_gettime(int clockId, out Timespec tp);

        [DllImport(Libc)]
        private static extern IntPtr strerror(int errnum);

        private static readonly object abiLock = new object();
        private static Abi abi;
        private static bool noFstatSymbol;

        /// <summary>The running architecture's constants; PlatformNotSupportedException where
        /// they are not known (vetting would read the wrong bytes of struct stat).</summary>
        private static Abi GetAbi()
        {
            lock (abiLock)
            {
                if (abi != null)
                    return abi;
                // struct utsname: six fields of 65 bytes on Linux; machine is the fifth.
                var buf = new byte[6 * 65 + 64];
                if (IntPtr.Size != 8 || uname(buf) != 0)
                    throw new PlatformNotSupportedException("SeedWireClient needs 64-bit Linux (uname failed or 32-bit process)");
                int end = Array.IndexOf(buf, (byte)0, 4 * 65);
                string machine = Encoding.ASCII.GetString(buf, 4 * 65, (end < 0 ? 5 * 65 : end) - 4 * 65);
                switch (machine)
                {
                    case "x86_64":
                        abi = new Abi { ModeOffset = 24, UidOffset = 28, SizeOffset = 48, ONofollow = 0x20000, StatVer = 1, SemSize = 32 };
                        break;
                    case "aarch64":
                        abi = new Abi { ModeOffset = 16, UidOffset = 24, SizeOffset = 48, ONofollow = 0x8000, StatVer = 0, SemSize = 32 };
                        break;
                    default:
                        throw new PlatformNotSupportedException(
                            "SeedWireClient knows struct stat and O_NOFOLLOW only on x86_64 and aarch64, not on " + machine);
                }
                return abi;
            }
        }

        /// <summary>fstat into a raw buffer: glibc &gt;= 2.33 exports fstat, older ones only __fxstat.</summary>
        private static int Fstat(Abi a, int fd, byte[] buf)
        {
            if (!noFstatSymbol)
            {
                try
                {
                    return fstat_fd(fd, buf);
                }
                catch (EntryPointNotFoundException)
                {
                    noFstatSymbol = true;
                }
            }
            return fxstat_fd(a.StatVer, fd, buf);
        }

        // --- State -----------------------------------------------------------------------------
        private readonly string prefix;
        private readonly int trustedMode;
        private readonly string shmName;
        private readonly string semReadyName;
        private readonly string semPromptsName;
        private readonly string semResponseName;
        private int fd = -1;
        private IntPtr mem = IntPtr.Zero;
        private int semSize;
        private IntPtr semReady = IntPtr.Zero;
        private IntPtr semPrompts = IntPtr.Zero;
        private IntPtr semResponse = IntPtr.Zero;
        private string closedReason;
        private bool shutdownSent;
        private bool disposed;

        /// <param name="prefix">The objects' prefix (the seed's is "llama_cpp").</param>
        /// <param name="trustedMode">The widest permission bits accepted on the worker's objects
        /// (default 0600); a seed-era worker's 0666 objects need 0x1B6 (0666) here.</param>
        public SeedWireClient(string prefix = "llama_cpp", int trustedMode = DefaultTrustedMode)
        {
            if (string.IsNullOrEmpty(prefix) || prefix.IndexOf('/') >= 0 || prefix.IndexOf('\0') >= 0)
                throw new ArgumentException("prefix must be non-empty and contain no '/' or NUL", "prefix");
            if (trustedMode < 0 || trustedMode > 0xFFF)
                throw new ArgumentOutOfRangeException("trustedMode", trustedMode, "permission bits: 0 to 07777");
            this.prefix = prefix;
            this.trustedMode = trustedMode;
            shmName = "/" + prefix + "_shared_mem";
            semReadyName = "/" + prefix + "_sem_ready";
            semPromptsName = "/" + prefix + "_sem_prompts_written";
            semResponseName = "/" + prefix + "_sem_response_written";
        }

        public string Prefix { get { return prefix; } }

        /// <summary>The widest permission bits accepted on the worker's objects.</summary>
        public int TrustedMode { get { return trustedMode; } }

        public bool IsConnected { get { return mem != IntPtr.Zero; } }

        /// <summary>Why the client is closed (requests throw SeedWireClosedException), or null.</summary>
        public string ClosedReason { get { return closedReason; } }

        /// <summary>
        /// Opens, vets and maps the worker's objects, retrying (every 10 ms) while they do not
        /// exist yet or are still smaller than the layout needs, until <paramref name="timeout"/>
        /// (then TimeoutException, or SeedWireRefusedException if an object was still too small).
        /// An object of another user, or one granting more than <see cref="TrustedMode"/>, is
        /// refused at once with SeedWireRefusedException: waiting would not make it trustworthy.
        /// </summary>
        public void Connect(TimeSpan timeout)
        {
            ThrowIfDisposed();
            if (IsConnected)
                throw new InvalidOperationException("already connected");
            Abi a = GetAbi();
            var clock = Stopwatch.StartNew();
            while (true)
            {
                SeedWireRefusedException tooSmall;
                string problem;
                try
                {
                    problem = TryOpenAll(a, out tooSmall);
                }
                catch
                {
                    CloseAll();
                    throw;
                }
                if (problem == null)
                    return;
                CloseAll();
                if (clock.Elapsed >= timeout)
                {
                    if (tooSmall != null)
                        throw tooSmall;
                    throw new TimeoutException(string.Format(
                        "connect to prefix '{0}': objects not usable after {1:F1} s: {2}",
                        prefix, timeout.TotalSeconds, problem));
                }
                Thread.Sleep(10);
            }
        }

        /// <summary>Null on success, else why the objects are not (yet) usable; a too-small
        /// object (the worker may still be sizing it) is also returned in <paramref name="tooSmall"/>.
        /// Throws SeedWireRefusedException for an object that will never be usable.</summary>
        private string TryOpenAll(Abi a, out SeedWireRefusedException tooSmall)
        {
            tooSmall = null;
            // glibc's shm_open adds O_NOFOLLOW and O_CLOEXEC itself.
            fd = shm_open(shmName, O_RDWR, 0);
            if (fd < 0)
                return Describe("shm_open " + shmName, Marshal.GetLastWin32Error());
            string problem = Vet(a, fd, "shared memory " + shmName, TotalSize, out tooSmall);
            if (problem != null)
                return problem;
            // Mapped through the descriptor just vetted, so the checks apply to what is mapped.
            IntPtr p = mmap(IntPtr.Zero, new UIntPtr((uint)TotalSize), PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                IntPtr.Zero);
            if (p == MAP_FAILED)
                return Describe("mmap " + shmName, Marshal.GetLastWin32Error());
            mem = p;
            // The mapping keeps the object; the descriptor is not needed any more.
            close(fd);
            fd = -1;
            semSize = a.SemSize;
            problem = OpenSemaphore(a, semReadyName, out semReady, out tooSmall)
                ?? OpenSemaphore(a, semPromptsName, out semPrompts, out tooSmall)
                ?? OpenSemaphore(a, semResponseName, out semResponse, out tooSmall);
            return problem;
        }

        /// <summary>
        /// Opens a named semaphore the way glibc's sem_open does (its backing file
        /// /dev/shm/sem.&lt;name&gt; holds a process-shared sem_t; mapping it gives a pointer the
        /// sem_* calls accept), but vets the descriptor before mapping it. sem_open would open
        /// the name again after any check, so a name swapped in between could not be seen.
        /// </summary>
        private string OpenSemaphore(Abi a, string name, out IntPtr sem, out SeedWireRefusedException tooSmall)
        {
            sem = IntPtr.Zero;
            tooSmall = null;
            string path = "/dev/shm/sem." + name.Substring(1);
            int sfd = open_file(path, O_RDWR | a.ONofollow | O_CLOEXEC);
            if (sfd < 0)
                return Describe("open " + path + " (semaphore " + name + ")", Marshal.GetLastWin32Error());
            try
            {
                string problem = Vet(a, sfd, "semaphore " + name + " (" + path + ")", a.SemSize, out tooSmall);
                if (problem != null)
                    return problem;
                IntPtr p = mmap(IntPtr.Zero, new UIntPtr((uint)a.SemSize), PROT_READ | PROT_WRITE, MAP_SHARED, sfd,
                    IntPtr.Zero);
                if (p == MAP_FAILED)
                    return Describe("mmap " + path, Marshal.GetLastWin32Error());
                sem = p;
                return null;
            }
            finally
            {
                close(sfd);
            }
        }

        /// <summary>
        /// fstat-s <paramref name="objFd"/> and throws SeedWireRefusedException unless it is a
        /// regular file owned by our effective uid granting no more than the trusted mode. A file
        /// smaller than <paramref name="needed"/> is returned as a problem (and in
        /// <paramref name="tooSmall"/>): the worker creates the object empty and sizes it next.
        /// </summary>
        private string Vet(Abi a, int objFd, string what, long needed, out SeedWireRefusedException tooSmall)
        {
            tooSmall = null;
            var st = new byte[StatBufferSize];
            if (Fstat(a, objFd, st) != 0)
                return Describe("fstat " + what, Marshal.GetLastWin32Error());
            int mode = BitConverter.ToInt32(st, a.ModeOffset);
            uint owner = BitConverter.ToUInt32(st, a.UidOffset);
            long size = BitConverter.ToInt64(st, a.SizeOffset);
            uint me = geteuid();
            int perm = mode & 0xFFF;
            if ((mode & S_IFMT) != S_IFREG)
                throw new SeedWireRefusedException(SeedWireRefusal.NotRegularFile, what,
                    string.Format("{0} is not a regular file (mode {1}); refusing to use it", what,
                        Convert.ToString(mode, 8)),
                    owner, me, perm, trustedMode, size, needed);
            if (owner != me)
                throw new SeedWireRefusedException(SeedWireRefusal.WrongOwner, what,
                    string.Format("{0} is owned by uid {1}, not by this user (uid {2}); refusing to use it", what,
                        owner, me),
                    owner, me, perm, trustedMode, size, needed);
            if ((perm & ~trustedMode) != 0)
                throw new SeedWireRefusedException(SeedWireRefusal.WrongMode, what,
                    string.Format("{0} has mode {1}, wider than the trusted {2}; refusing to use it", what,
                        Octal(perm), Octal(trustedMode)),
                    owner, me, perm, trustedMode, size, needed);
            if (size < needed)
            {
                tooSmall = new SeedWireRefusedException(SeedWireRefusal.TooSmall, what,
                    string.Format("{0} is {1} bytes, smaller than the {2} the layout needs", what, size, needed),
                    owner, me, perm, trustedMode, size, needed);
                return tooSmall.Message + " (not initialised yet?)";
            }
            return null;
        }

        private static string Octal(int mode)
        {
            return Convert.ToString(mode, 8).PadLeft(4, '0');
        }

        /// <summary>
        /// One request: waits for ready, writes both prompts (each cut at a character boundary
        /// to at most 4095 UTF-8 bytes, NUL-terminated) and a zero shutdown byte, posts
        /// prompts_written, waits for response_written and returns the response up to its first
        /// NUL. <paramref name="timeout"/> bounds the whole request.
        /// A timeout waiting for ready leaves the client usable (nothing was written). Any
        /// failure after that, above all a timeout waiting for the response, closes the client:
        /// the worker may still answer, and without sequence numbers its late response_written
        /// would be taken for the next request's. Throws SeedWireClosedException when closed.
        /// </summary>
        public string SendRequest(string userPrompt, string systemPrompt, TimeSpan timeout)
        {
            ThrowIfNotUsable();
            var clock = Stopwatch.StartNew();
            Wait(semReady, "waiting for the worker to be ready (sem_ready)", clock, timeout);
            try
            {
                // The worker posts ready only after the previous request's response_written, and
                // posts nothing more until our prompts_written: a count left now is the answer
                // to a request whose client stopped waiting (timed out or died). Taken, it would
                // be read as ours.
                Drain(semResponse, semResponseName);
                WritePrompt(SystemOffset, systemPrompt ?? "");
                WritePrompt(UserOffset, userPrompt ?? "");
                Marshal.WriteByte(mem, ShutdownOffset, 0);
                Post(semPrompts, semPromptsName);
                Wait(semResponse, "waiting for the response (sem_response_written)", clock, timeout);
            }
            catch (TimeoutException e)
            {
                closedReason = "a request timed out waiting for its answer; seed mode has no sequence numbers, " +
                    "so the late answer could not be told from the next one (" + e.Message + ")";
                throw;
            }
            catch (Exception e)
            {
                closedReason = "a request failed while holding the turn, leaving the cycle in an unknown state (" +
                    e.Message + ")";
                throw;
            }
            return ReadResponse();
        }

        /// <summary>
        /// Asks the worker to exit, as the seed does: waits for ready, sets shutdown_requested
        /// to 1 and posts prompts_written. The worker then exits and removes its names; the
        /// client is closed. Allowed on a client closed by a failed request: it reads no answer,
        /// so a late response_written cannot mislead it.
        /// </summary>
        public void Shutdown(TimeSpan timeout)
        {
            ThrowIfNotConnected();
            if (shutdownSent)
                throw new SeedWireClosedException(closedReason);
            var clock = Stopwatch.StartNew();
            Wait(semReady, "waiting for the worker to be ready before shutdown (sem_ready)", clock, timeout);
            shutdownSent = true;
            closedReason = "shut down";
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

        /// <summary>Takes every post counted on <paramref name="sem"/> without waiting.</summary>
        private static void Drain(IntPtr sem, string name)
        {
            while (true)
            {
                if (sem_trywait(sem) == 0)
                    continue;
                int errno = Marshal.GetLastWin32Error();
                if (errno == EAGAIN)
                    return;
                if (errno != EINTR)
                    throw new InvalidOperationException(Describe("sem_trywait " + name, errno));
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

        private void ThrowIfNotUsable()
        {
            ThrowIfNotConnected();
            if (closedReason != null)
                throw new SeedWireClosedException(closedReason);
        }

        private static void Unmap(ref IntPtr p, int length)
        {
            if (p != IntPtr.Zero)
            {
                munmap(p, new UIntPtr((uint)length));
                p = IntPtr.Zero;
            }
        }

        private void CloseAll()
        {
            Unmap(ref mem, TotalSize);
            if (fd >= 0)
            {
                close(fd);
                fd = -1;
            }
            // The semaphores are our own mappings of their files (see OpenSemaphore): unmapped,
            // not sem_close-d.
            Unmap(ref semReady, semSize);
            Unmap(ref semPrompts, semSize);
            Unmap(ref semResponse, semSize);
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

        // munmap and close never block.
        ~SeedWireClient()
        {
            CloseAll();
        }
    }
}
