// WireClientTest: drives SeedWireClient against an already-running standalone llama-shm worker.
//
//   mono WireClientTest.exe PREFIX            echo engine: every answer must be system + "\n" + user;
//                                             also: a semaphore with a wider mode (or, as root,
//                                             another owner), a too-small object and a symlinked
//                                             semaphore name are refused
//   mono WireClientTest.exe PREFIX --llm      real model: the answer must be non-empty
//   mono WireClientTest.exe PREFIX --slow-worker MS
//                                             echo worker started with --echo-delay-ms MS: a
//                                             request that times out closes the client, and the
//                                             next call fails as closed instead of returning the
//                                             late (old) answer
//   mono WireClientTest.exe PREFIX --wide-mode OCTAL
//                                             worker started with --mode OCTAL (e.g. 666):
//                                             refused under the default trusted mode 0600,
//                                             served when the client trusts OCTAL
//   mono WireClientTest.exe PREFIX --foreign-owner
//                                             worker running as another user: refused (owner),
//                                             whatever the trusted mode; the worker is left
//                                             running for the caller to stop
//   options: --timeout SECS (per step; default 10, or 120 with --llm)
//
// Exits 0 after asking the worker to shut down (except --foreign-owner, which cannot); 1 with a
// message on stderr on any mismatch or error (the worker is then left running for the caller to
// stop).

using System;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using static LlamaShm.TestChecks;

namespace LlamaShm
{
    public static class WireClientTest
    {
        [DllImport("libc.so.6", SetLastError = true)]
        private static extern int chmod(string path, uint mode);

        [DllImport("libc.so.6", SetLastError = true)]
        private static extern int chown(string path, uint owner, uint group);

        [DllImport("libc.so.6")]
        private static extern uint geteuid();

        [DllImport("libc.so.6", SetLastError = true)]
        private static extern int shm_open(string name, int oflag, uint mode);

        [DllImport("libc.so.6", SetLastError = true)]
        private static extern int shm_unlink(string name);

        [DllImport("libc.so.6", SetLastError = true)]
        private static extern int ftruncate(int fd, long length);

        [DllImport("libc.so.6", SetLastError = true)]
        private static extern int close(int fd);

        [DllImport("libc.so.6", SetLastError = true)]
        private static extern int symlink(string target, string linkPath);

        [DllImport("libc.so.6", SetLastError = true)]
        private static extern int unlink(string path);

        [DllImport("libc.so.6")]
        private static extern uint getegid();

        private const int Mode0600 = 0x180;

        public static int Main(string[] args)
        {
            string prefix = null;
            bool llm = false;
            bool foreignOwner = false;
            double timeoutSecs = -1;
            int slowMs = 0;
            int wideMode = -1;
            for (int i = 0; i < args.Length; i++)
            {
                if (args[i] == "--llm")
                    llm = true;
                else if (args[i] == "--slow-worker" && i + 1 < args.Length)
                    slowMs = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
                else if (args[i] == "--wide-mode" && i + 1 < args.Length)
                    wideMode = Convert.ToInt32(args[++i], 8);
                else if (args[i] == "--foreign-owner")
                    foreignOwner = true;
                else if (args[i] == "--timeout" && i + 1 < args.Length)
                    timeoutSecs = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
                else if (prefix == null && !args[i].StartsWith("--"))
                    prefix = args[i];
                else
                    return Usage("unexpected argument " + args[i]);
            }
            if (timeoutSecs < 0)
                timeoutSecs = llm ? 120 : 10;
            TimeSpan timeout = TimeSpan.FromSeconds(timeoutSecs);
            prefix = prefix ?? "llama_cpp";
            Func<Exception, string> describe = e => "ERROR: " + e.GetType().Name + ": " + e.Message;

            if (slowMs > 0)
                return Run("WireClientTest", () => RunSlowWorker(prefix, slowMs, timeout), describe);
            if (wideMode >= 0)
                return Run("WireClientTest", () => RunWideMode(prefix, wideMode, timeout), describe);
            if (foreignOwner)
                return Run("WireClientTest", () => RunForeignOwner(prefix, timeout), describe);
            return Run("WireClientTest", () =>
            {
                using (var client = new SeedWireClient(prefix))
                {
                    client.Connect(timeout);
                    Console.WriteLine("connected to prefix '{0}'", client.Prefix);
                    if (llm)
                    {
                        RunLlm(client, timeout);
                    }
                    else
                    {
                        // While this client holds the objects (so they exist), vet through others.
                        RunSemaphoreVetting(prefix, timeout);
                        RunFakeObjects(prefix);
                        RunEcho(client, timeout);
                    }
                    client.Shutdown(timeout);
                    Console.WriteLine("shutdown requested; {0} checks passed", Passed);
                }
            }, describe);
        }

        private static int Usage(string problem)
        {
            Console.Error.WriteLine("WireClientTest: " + problem);
            Console.Error.WriteLine("usage: mono WireClientTest.exe [PREFIX] [--llm | --slow-worker MS | --wide-mode OCTAL | " +
                "--foreign-owner] [--timeout SECS]");
            return 2;
        }

        private static string Show(string s)
        {
            if (s.Length > 80)
                return string.Format("\"{0}…\" ({1} chars, {2} UTF-8 bytes)", Escape(s.Substring(0, 80)), s.Length,
                    Encoding.UTF8.GetByteCount(s));
            return "\"" + Escape(s) + "\"";
        }

        private static string Escape(string s)
        {
            return s.Replace("\\", "\\\\").Replace("\n", "\\n").Replace("\0", "\\0");
        }

        /// <summary>Sends one request and checks the echo engine's answer, system + "\n" + user,
        /// where user is what the client actually put on the wire.</summary>
        private static string Echo(SeedWireClient client, string user, string system, TimeSpan timeout,
            string label)
        {
            string wireUser = Encoding.UTF8.GetString(SeedWireClient.EncodeTruncated(user, SeedWireClient.MaxPromptBytes));
            string wireSystem =
                Encoding.UTF8.GetString(SeedWireClient.EncodeTruncated(system, SeedWireClient.MaxPromptBytes));
            string expected = wireSystem + "\n" + wireUser;
            string answer = client.SendRequest(user, system, timeout);
            Check(answer == expected, string.Format("{0}: expected {1}, got {2}", label, Show(expected), Show(answer)));
            Check(answer.IndexOf('\uFFFD') < 0, label + ": the answer contains U+FFFD (invalid UTF-8 on the wire)");
            Console.WriteLine("ok   {0}: {1}", label, Show(answer));
            return answer;
        }

        private static void RunEcho(SeedWireClient client, TimeSpan timeout)
        {
            Echo(client, "Hello", "You are a bot.", timeout, "ascii");
            Echo(client, "héllo wörld ✓ 日本", "système ✓", timeout, "non-ascii");
            Echo(client, "emoji 😀🎌 outside the BMP", "", timeout, "empty system, surrogate pairs");

            // 5000 bytes of 'é' (2 bytes each): 4095 bytes would split the 2048th; the client must
            // send 2047 of them (4094 bytes) and the echo must come back valid and whole.
            string longUser = new string('é', 2500);
            string answer = Echo(client, longUser, "S", timeout, "over-long 'é' x 2500");
            string echoedUser = answer.Substring(answer.IndexOf('\n') + 1);
            int userBytes = Encoding.UTF8.GetByteCount(echoedUser);
            Check(userBytes <= SeedWireClient.MaxPromptBytes,
                string.Format("over-long: the echoed user prompt is {0} bytes, more than 4095", userBytes));
            Check(userBytes == 4094 && echoedUser == new string('é', 2047),
                string.Format("over-long: expected 2047 'é' (4094 bytes), got {0} chars / {1} bytes",
                    echoedUser.Length, userBytes));
            byte[] raw = Encoding.UTF8.GetBytes(answer);
            try
            {
                new UTF8Encoding(false, true).GetString(raw);
            }
            catch (DecoderFallbackException)
            {
                Check(false, "over-long: the answer is not valid UTF-8");
            }

            // A 4-byte character straddling the limit: cut before it, never half a surrogate pair.
            string straddle = new string('a', 4093) + "😀" + "tail";
            string a2 = Echo(client, straddle, "", timeout, "4-byte char at the limit");
            Check(a2 == "\n" + new string('a', 4093), "4-byte char at the limit: wrong cut");

            // Exactly 4095 bytes: kept whole.
            Echo(client, new string('x', 4095), "", timeout, "exactly 4095 bytes");
            // A long system prompt is cut the same way (3-byte '€').
            Echo(client, "u", "x" + new string('€', 2000), timeout, "over-long system '€' x 2000");
            // A shorter prompt after a long one: no leftover bytes of the old one.
            Echo(client, "short", "s", timeout, "short after long");

            for (int i = 0; i < 20; i++)
            {
                string got = client.SendRequest("n" + i, "s", timeout);
                Check(got == "s\nn" + i, string.Format("burst #{0}: expected \"s\\nn{0}\", got {1}", i, Show(got)));
            }
            Console.WriteLine("ok   20 requests in a row");
        }

        /// <summary>Against a worker that answers after <paramref name="delayMs"/>: a request
        /// that times out waiting for its answer closes the client (without sequence numbers the
        /// late answer could not be told from the next one); a fresh client gets its own answers
        /// (it drains the late post); the closed client can still shut the worker down.</summary>
        private static void RunSlowWorker(string prefix, int delayMs, TimeSpan timeout)
        {
            TimeSpan shortTimeout = TimeSpan.FromMilliseconds(delayMs / 4);
            TimeSpan slow = timeout + TimeSpan.FromMilliseconds(2 * delayMs);
            using (var client = new SeedWireClient(prefix))
            {
                client.Connect(timeout);
                Console.WriteLine("connected to prefix '{0}' (worker answers after {1} ms)", client.Prefix, delayMs);
                try
                {
                    string early = client.SendRequest("first", "s", shortTimeout);
                    Check(false, "timeout: a request to a worker answering after " + delayMs +
                        " ms returned within " + shortTimeout.TotalMilliseconds + " ms: " + Show(early));
                }
                catch (TimeoutException e)
                {
                    Check(e.Message.Contains("sem_response_written"), "timeout: the message names another step: " + e.Message);
                }
                Console.WriteLine("ok   a request timed out after {0} ms", shortTimeout.TotalMilliseconds);
                Check(client.ClosedReason != null, "timeout: the client is not closed");
                // With a generous timeout the next request would wait for ready, which the worker
                // posts only after the late answer: a client that stayed open would then take the
                // old answer's response_written and return "s\nfirst".
                try
                {
                    string next = client.SendRequest("second", "s", slow);
                    Check(false, next == "s\nfirst"
                        ? "after a timeout, the next request returned the OLD answer " + Show(next)
                        : "after a timeout, the next request returned " + Show(next) + " instead of failing as closed");
                }
                catch (SeedWireClosedException e)
                {
                    Check(e.Message.Contains("timed out"), "closed: the reason does not say why: " + e.Message);
                    Console.WriteLine("ok   the next request fails: {0}", e.Message);
                }

                // Another client, once the late answer is in: it drains that response_written
                // after taking the turn, so it reads its own answer, not the old one.
                using (var fresh = new SeedWireClient(prefix))
                {
                    fresh.Connect(timeout);
                    string got = fresh.SendRequest("fresh", "s", slow);
                    Check(got == "s\nfresh", "a fresh client after the timed-out one: expected \"s\\nfresh\", got " + Show(got));
                    Console.WriteLine("ok   a fresh client gets its own answer: {0}", Show(got));
                }

                // Shutting down reads no answer, so the closed client may still do it.
                client.Shutdown(slow);
                Console.WriteLine("shutdown requested by the closed client");
                try
                {
                    client.SendRequest("after", "s", timeout);
                    Check(false, "a request after Shutdown did not fail");
                }
                catch (SeedWireClosedException e)
                {
                    Check(e.Reason == "shut down", "after Shutdown: closed for another reason: " + e.Reason);
                }
                Console.WriteLine("shutdown requested; {0} checks passed", Passed);
            }
        }

        /// <summary>Connect must fail at once (well before <paramref name="timeout"/>: waiting would
        /// not make the object trustworthy) with a refusal for <paramref name="reason"/> naming
        /// <paramref name="objectPart"/>.</summary>
        private static SeedWireRefusedException ExpectRefused(string prefix, int trustedMode, TimeSpan timeout,
            SeedWireRefusal reason, string objectPart, string label)
        {
            var clock = Stopwatch.StartNew();
            using (var c = new SeedWireClient(prefix, trustedMode))
            {
                try
                {
                    c.Connect(timeout);
                }
                catch (SeedWireRefusedException e)
                {
                    Check(e.Reason == reason, string.Format("{0}: refused for {1}, not {2}: {3}", label, e.Reason, reason,
                        e.Message));
                    Check(e.ObjectName.Contains(objectPart),
                        string.Format("{0}: the refusal names {1}, not {2}", label, e.ObjectName, objectPart));
                    Check(clock.Elapsed < TimeSpan.FromTicks(timeout.Ticks / 2),
                        string.Format("{0}: refused only after {1:F1} s", label, clock.Elapsed.TotalSeconds));
                    Check(!c.IsConnected, label + ": the refused client is connected");
                    Console.WriteLine("ok   {0}: {1}", label, e.Message);
                    return e;
                }
                Check(false, label + ": Connect accepted the objects");
                return null;
            }
        }

        /// <summary>The worker's objects have mode <paramref name="mode"/>: refused under the
        /// default trusted mode (0600), served once the client trusts that mode.</summary>
        private static void RunWideMode(string prefix, int mode, TimeSpan timeout)
        {
            Check((mode & ~Mode0600) != 0, "--wide-mode must grant more than 0600");
            SeedWireRefusedException e = ExpectRefused(prefix, SeedWireClient.DefaultTrustedMode, timeout,
                SeedWireRefusal.WrongMode, "_shared_mem", "mode " + Convert.ToString(mode, 8) + " under the default trust");
            Check(e.Mode == mode && e.AllowedMode == Mode0600,
                string.Format("wide mode: reported mode {0} / allowed {1}", Convert.ToString(e.Mode, 8),
                    Convert.ToString(e.AllowedMode, 8)));
            using (var client = new SeedWireClient(prefix, mode))
            {
                client.Connect(timeout);
                Console.WriteLine("connected to prefix '{0}' trusting mode {1}", prefix, Convert.ToString(mode, 8));
                Echo(client, "Hello", "wide", timeout, "request with the widened trusted mode");
                client.Shutdown(timeout);
                Console.WriteLine("shutdown requested; {0} checks passed", Passed);
            }
        }

        /// <summary>The worker runs as another user: its objects are refused for their owner,
        /// even when the client trusts every mode.</summary>
        private static void RunForeignOwner(string prefix, TimeSpan timeout)
        {
            SeedWireRefusedException e = ExpectRefused(prefix, SeedWireClient.DefaultTrustedMode, timeout,
                SeedWireRefusal.WrongOwner, "_shared_mem", "another user's objects");
            Check(e.Owner != geteuid() && e.Me == geteuid(),
                string.Format("foreign owner: reported owner {0}, me {1}", e.Owner, e.Me));
            ExpectRefused(prefix, 0xFFF, timeout, SeedWireRefusal.WrongOwner, "_shared_mem",
                "another user's objects, trusting mode 07777");
            Console.WriteLine("refused as expected; {0} checks passed", Passed);
        }

        /// <summary>A semaphore whose backing file grants more than trusted, or (as root) belongs
        /// to another user, is refused, naming it; restored, it is accepted again. Run while the
        /// worker is serving <paramref name="prefix"/> with mode 0600.</summary>
        private static void RunSemaphoreVetting(string prefix, TimeSpan timeout)
        {
            string sem = prefix + "_sem_response_written";
            string path = "/dev/shm/sem." + sem;
            try
            {
                CheckSys(chmod(path, 0x1A4), "chmod 0644 " + path); // 0644
                SeedWireRefusedException e = ExpectRefused(prefix, SeedWireClient.DefaultTrustedMode, timeout,
                    SeedWireRefusal.WrongMode, sem, "semaphore with mode 0644");
                Check(e.Mode == 0x1A4, "semaphore mode: reported " + Convert.ToString(e.Mode, 8));
                CheckSys(chmod(path, (uint)Mode0600), "chmod 0600 " + path);
                if (geteuid() == 0)
                {
                    CheckSys(chown(path, 65534, 65534), "chown 65534 " + path);
                    e = ExpectRefused(prefix, SeedWireClient.DefaultTrustedMode, timeout, SeedWireRefusal.WrongOwner,
                        sem, "semaphore owned by uid 65534");
                    Check(e.Owner == 65534, "semaphore owner: reported " + e.Owner);
                    CheckSys(chown(path, geteuid(), getegid()), "chown back " + path);
                }
                else
                {
                    Console.WriteLine("skip semaphore of another owner: needs root to chown");
                }
            }
            finally
            {
                chmod(path, (uint)Mode0600);
                if (geteuid() == 0)
                    chown(path, geteuid(), getegid());
            }
            using (var again = new SeedWireClient(prefix))
            {
                again.Connect(timeout);
                Console.WriteLine("ok   restored semaphore accepted");
            }
        }

        /// <summary>Objects this test makes itself, next to the worker's: a shared-memory object
        /// smaller than the layout is refused as TooSmall once Connect's deadline passes (the
        /// worker sizes its object just after creating it, so a small one is retried until then);
        /// a semaphore name that is a symlink (here to the worker's real semaphore) is never
        /// followed.</summary>
        private static void RunFakeObjects(string prefix)
        {
            const int O_RDWR = 2, O_CREAT = 0x40, O_EXCL = 0x80; // x86_64 and aarch64
            const int ELOOP = 40;
            TimeSpan brief = TimeSpan.FromMilliseconds(300);
            string small = prefix + "_small";
            string link = prefix + "_link";
            string linkPath = "/dev/shm/sem." + link + "_sem_ready";
            try
            {
                int fd = shm_open("/" + small + "_shared_mem", O_RDWR | O_CREAT | O_EXCL, (uint)Mode0600);
                CheckSys(fd >= 0 ? 0 : -1, "shm_open /" + small + "_shared_mem");
                CheckSys(ftruncate(fd, 100), "ftruncate");
                close(fd);
                using (var c = new SeedWireClient(small))
                {
                    try
                    {
                        c.Connect(brief);
                        Check(false, "a 100-byte object was accepted");
                    }
                    catch (SeedWireRefusedException e)
                    {
                        Check(e.Reason == SeedWireRefusal.TooSmall && e.Size == 100 && e.NeededSize == 40961,
                            string.Format("too small: {0}, {1} of {2} bytes", e.Reason, e.Size, e.NeededSize));
                        Console.WriteLine("ok   too small: {0}", e.Message);
                    }
                }

                fd = shm_open("/" + link + "_shared_mem", O_RDWR | O_CREAT | O_EXCL, (uint)Mode0600);
                CheckSys(fd >= 0 ? 0 : -1, "shm_open /" + link + "_shared_mem");
                CheckSys(ftruncate(fd, SeedWireClient.TotalSize), "ftruncate");
                close(fd);
                CheckSys(symlink("/dev/shm/sem." + prefix + "_sem_ready", linkPath), "symlink " + linkPath);
                using (var c = new SeedWireClient(link))
                {
                    try
                    {
                        c.Connect(brief);
                        Check(false, "a semaphore name that is a symlink was followed");
                    }
                    catch (TimeoutException e)
                    {
                        Check(e.Message.Contains(linkPath) && e.Message.Contains("errno " + ELOOP),
                            "symlinked semaphore: " + e.Message);
                        Console.WriteLine("ok   symlinked semaphore not followed: {0}", e.Message);
                    }
                }
            }
            finally
            {
                shm_unlink("/" + small + "_shared_mem");
                shm_unlink("/" + link + "_shared_mem");
                unlink(linkPath);
            }
        }

        private static void CheckSys(int rc, string what)
        {
            Check(rc == 0, what + ": errno " + Marshal.GetLastWin32Error());
        }

        private static void RunLlm(SeedWireClient client, TimeSpan timeout)
        {
            string answer = client.SendRequest("What is the capital of France? Answer in one sentence.",
                "You are a helpful assistant.", timeout);
            Check(answer.Trim().Length > 0, "llm: the answer is empty");
            Check(answer.IndexOf('\uFFFD') < 0, "llm: the answer contains U+FFFD");
            Console.WriteLine("ok   llm answer: {0}", Show(answer.Trim()));
            string second = client.SendRequest("héllo ✓ 日本: say hi", "", timeout);
            Check(second.Trim().Length > 0, "llm: the second answer is empty");
            Console.WriteLine("ok   llm second answer: {0}", Show(second.Trim()));
        }
    }
}
