// WireClientTest: drives SeedWireClient against an already-running standalone llama-shm worker.
//
//   mono WireClientTest.exe PREFIX            echo engine: every answer must be system + "\n" + user
//   mono WireClientTest.exe PREFIX --llm      real model: the answer must be non-empty
//   options: --timeout SECS (per step; default 10, or 120 with --llm)
//
// Exits 0 after asking the worker to shut down; 1 with a message on stderr on any mismatch or
// error (the worker is then left running for the caller to stop).

using System;
using System.Text;
using static LlamaShm.TestChecks;

namespace LlamaShm
{
    public static class WireClientTest
    {
        public static int Main(string[] args)
        {
            string prefix = null;
            bool llm = false;
            double timeoutSecs = -1;
            for (int i = 0; i < args.Length; i++)
            {
                if (args[i] == "--llm")
                    llm = true;
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

            return Run("WireClientTest", () =>
            {
                using (var client = new SeedWireClient(prefix ?? "llama_cpp"))
                {
                    client.Connect(timeout);
                    Console.WriteLine("connected to prefix '{0}'", client.Prefix);
                    if (llm)
                        RunLlm(client, timeout);
                    else
                        RunEcho(client, timeout);
                    client.Shutdown(timeout);
                    Console.WriteLine("shutdown requested; {0} checks passed", Passed);
                }
            }, e => "ERROR: " + e.GetType().Name + ": " + e.Message);
        }

        private static int Usage(string problem)
        {
            Console.Error.WriteLine("WireClientTest: " + problem);
            Console.Error.WriteLine("usage: mono WireClientTest.exe [PREFIX] [--llm] [--timeout SECS]");
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
