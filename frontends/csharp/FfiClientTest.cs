// FfiClientTest: drives LlamaCppLinuxClient (the seed's API over the C ABI) against a worker it
// spawns itself.
//
//   mono FfiClientTest.exe WORKER_PATH          echo engine: exact answers, errors, shutdown
//   mono FfiClientTest.exe WORKER_PATH --llm    SmolLM2, greedy: "What is the capital of France?"
//                                               must be answered with "Paris"
//
// Needs libllama_shm_ffi.so on LD_LIBRARY_PATH (or next to the .exe). Exits 0 only if every check
// passed; 1 with a message on stderr otherwise.

using System;
using System.IO;
using static LlamaShm.TestChecks;

namespace LlamaShm
{
    public static class FfiClientTest
    {
        public static int Main(string[] args)
        {
            if (args.Length < 1 || args.Length > 2 || (args.Length == 2 && args[1] != "--llm"))
            {
                Console.Error.WriteLine("usage: FfiClientTest.exe WORKER_PATH [--llm]");
                return 2;
            }
            string worker = args[0];
            return Run("FfiClientTest", () =>
            {
                if (args.Length == 2)
                    RunLlm(worker);
                else
                    RunEcho(worker);
                Console.WriteLine("FfiClientTest: {0} checks passed", Passed);
            }, e => "FAILED with an exception: " + e);
        }

        private static void Expect(LlamaCppLinuxClient client, string user, string system, string expected)
        {
            string answer = client.SendRequest(user, system);
            Check(answer == expected, string.Format("echo of ({0}, {1}): expected \"{2}\", got \"{3}\"",
                                                    user, system, expected, answer));
        }

        private static bool ProcessExists(uint pid)
        {
            return Directory.Exists("/proc/" + pid);
        }

        private static void RunEcho(string worker)
        {
            // A worker that does not exist: the library's typed error, with its message.
            using (var missing = new LlamaCppLinuxClient())
            {
                try
                {
                    missing.Initialize("/nonexistent/llama-shm-worker");
                    Check(false, "Initialize of a missing worker did not throw");
                }
                catch (LlamaShmException e)
                {
                    Check(e.Status == LlamaCppLinuxClient.LSHM_E_WORKER_NOT_FOUND, "missing worker: status " + e.Status);
                    Check(e.Message.Contains("/nonexistent/llama-shm-worker"), "missing worker: message " + e.Message);
                }
            }

            uint pid;
            using (var client = new LlamaCppLinuxClient())
            {
                try
                {
                    client.SendRequest("too early", "");
                    Check(false, "SendRequest before Initialize did not throw");
                }
                catch (InvalidOperationException)
                {
                    Pass();
                }
                client.Initialize(worker, "--engine", "echo");
                pid = client.WorkerPid;
                Check(pid > 0 && ProcessExists(pid), "the worker is running");

                Expect(client, "Hello", "Be terse.", "Be terse.\nHello");
                Expect(client, "What is 2+2?", "", "\nWhat is 2+2?");
                Expect(client, "héllo wörld — 日本語 😀", "Système ✓", "Système ✓\nhéllo wörld — 日本語 😀");
                string many = new string('é', 2000); // 4000 bytes: fits the 4095-byte field
                Expect(client, many, "s", "s\n" + many);
                for (int i = 0; i < 20; i++)
                    Expect(client, "n" + i, "s", "s\nn" + i);
                try
                {
                    client.SendRequest("a\0b", "");
                    Check(false, "a NUL in the prompt did not throw");
                }
                catch (ArgumentException)
                {
                    Pass();
                }
                Expect(client, "still fine", "", "\nstill fine");

                client.Shutdown();
                Check(!ProcessExists(pid), "the worker still runs after Shutdown");
                client.Shutdown(); // a second call does nothing
                try
                {
                    client.SendRequest("after shutdown", "");
                    Check(false, "SendRequest after Shutdown did not throw");
                }
                catch (InvalidOperationException)
                {
                    Pass();
                }
            }

            // Dispose without Shutdown still stops the worker.
            var abandoned = new LlamaCppLinuxClient();
            abandoned.Initialize(worker, "--engine", "echo");
            uint pid2 = abandoned.WorkerPid;
            Expect(abandoned, "x", "y", "y\nx");
            abandoned.Dispose();
            Check(!ProcessExists(pid2), "the worker still runs after Dispose");
        }

        private static void RunLlm(string worker)
        {
            using (var client = new LlamaCppLinuxClient())
            {
                client.RequestTimeout = TimeSpan.FromSeconds(120);
                client.Initialize(worker, "--engine", "llama", "--greedy", "--max-tokens", "64");
                string answer = client.SendRequest("What is the capital of France?", "You are a helpful assistant.");
                Console.WriteLine("answer: " + answer);
                Check(answer.Contains("Paris"), "the answer does not mention Paris: " + answer);
                client.Shutdown();
            }
        }
    }
}
