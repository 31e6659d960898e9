// RequestTests: whole answers (SendRequest, SendRequestAsync) from the echo worker, byte for
// byte, and the per-request and per-client bounds: deadline, token budget, prompt policy, answer
// size, request timeout.

using System;
using System.Threading;
using System.Threading.Tasks;
using NUnit.Framework;

namespace LlamaShm.Tests
{
    [TestFixture]
    public class RequestTests
    {
        private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

        [Test, Timeout(60000)]
        public void Answers_are_the_exact_echo_of_the_prompts()
        {
            using (var client = LlamaShmClient.Start(TestWorker.Echo()))
            {
                Assert.That(client.WorkerProcessId, Is.GreaterThan(0));
                Assert.That(TestWorker.Alive(client.WorkerProcessId), "the worker runs");

                Response r = client.SendRequest("Hello", "Be terse.");
                Assert.That(r.Text, Is.EqualTo("Be terse.\nHello"));
                Assert.That(r.Finish, Is.EqualTo(FinishReason.Stop));
                Assert.That(r.Truncated, Is.False);
                Assert.That(r.Sequence, Is.GreaterThan(0UL));

                // Non-ASCII in both prompts, a null system prompt, and sequence numbers that grow.
                string user = "Grüße, 世界 — 🦙";
                Response u = client.SendRequest(user, "système");
                Assert.That(u.Text, Is.EqualTo(TestWorker.EchoOf(user, "système")));
                Assert.That(u.Sequence, Is.GreaterThan(r.Sequence));
                Assert.That(client.SendRequest("only user", null).Text, Is.EqualTo("\nonly user"));

                Response a = TestWorker.Within(client.SendRequestAsync("async", "sys", CancellationToken.None), Bound, "SendRequestAsync");
                Assert.That(a.Text, Is.EqualTo("sys\nasync"));
            }
        }

        [Test, Timeout(60000)]
        public void Arguments_are_checked_before_anything_is_sent()
        {
            using (var client = LlamaShmClient.Start(TestWorker.Echo()))
            {
                Assert.Throws<ArgumentNullException>(() => client.SendRequest(null, "s"));
                Assert.Throws<ArgumentException>(() => client.SendRequest("a\0b", "s"));
                Assert.Throws<ArgumentException>(() => client.SendRequest("lone \ud800 surrogate", "s"));
                Assert.Throws<ArgumentOutOfRangeException>(() => client.SendRequestAsync("u", "s", new RequestOptions { MaxTokens = 0 }));
                Assert.Throws<ArgumentOutOfRangeException>(() => client.SendRequest("u", "s", new RequestOptions { Deadline = TimeSpan.Zero }));
                // The client still works afterwards.
                Assert.That(client.SendRequest("u", "s").Text, Is.EqualTo("s\nu"));
            }
        }

        [Test, Timeout(60000)]
        public void Max_tokens_ends_the_answer_with_Length_after_that_many_pieces()
        {
            using (var client = TestWorker.Paced(200))
            {
                // Pieces are at most 4 bytes: "abcd", "efgh", "ijkl" of the system prompt, then "\n", ...
                Response r = client.SendRequest("the user prompt", "abcdefghijkl", new RequestOptions { MaxTokens = 3 });
                Assert.That(r.Finish, Is.EqualTo(FinishReason.Length));
                Assert.That(r.Text, Is.EqualTo("abcdefghijkl"));
                Assert.That(r.Usage.GeneratedTokens, Is.EqualTo(3));
            }
        }

        [Test, Timeout(60000)]
        public void A_deadline_returns_the_answer_so_far_with_Deadline()
        {
            // 400 pieces of 5 ms: 2 s for the whole answer; the deadline is 300 ms.
            string user = TestWorker.Long(1600);
            string full = TestWorker.EchoOf(user, "s");
            using (var client = TestWorker.Paced(5000))
            {
                var started = DateTime.UtcNow;
                Response r = client.SendRequest(user, "s", new RequestOptions { Deadline = TimeSpan.FromMilliseconds(300) });
                TimeSpan took = DateTime.UtcNow - started;
                Assert.That(r.Finish, Is.EqualTo(FinishReason.Deadline));
                Assert.That(full.StartsWith(r.Text, StringComparison.Ordinal), "a prefix of the echo: " + r.Text);
                Assert.That(r.Text.Length, Is.LessThan(full.Length));
                Assert.That(took, Is.LessThan(TimeSpan.FromMilliseconds(1500)), "ended near its deadline");
            }
        }

        [Test, Timeout(60000)]
        public void Prompt_policy_truncates_or_refuses_an_over_long_prompt()
        {
            string user = TestWorker.Long(5000); // the wire holds 4095 bytes per prompt
            using (var client = LlamaShmClient.Start(TestWorker.Echo()))
            {
                Response r = client.SendRequest(user, "s");
                Assert.That(r.Text, Is.EqualTo("s\n" + user.Substring(0, 4095)));
            }
            var strict = TestWorker.Echo();
            strict.PromptPolicy = PromptPolicy.Strict;
            using (var client = LlamaShmClient.Start(strict))
            {
                var e = Assert.Throws<PromptEncodingException>(() => client.SendRequest(user, "s"));
                Assert.That(e.Status, Is.EqualTo(LshmStatus.Encode));
                Assert.That(client.SendRequest("fits", "s").Text, Is.EqualTo("s\nfits"), "the client still works");
            }
        }

        [Test, Timeout(60000)]
        public void An_answer_past_MaxAnswerBytes_throws_AnswerTooLong()
        {
            var o = TestWorker.Echo();
            o.MaxAnswerBytes = 16;
            using (var client = LlamaShmClient.Start(o))
            {
                Assert.That(client.SendRequest("tiny", "s").Text, Is.EqualTo("s\ntiny"));
                var e = Assert.Throws<AnswerTooLongException>(() => client.SendRequest(TestWorker.Long(200), "s"));
                Assert.That(((ILlamaShmError)e).Status, Is.EqualTo(LshmStatus.AnswerTooLong));
            }
        }

        [Test, Timeout(60000)]
        public void The_request_timeout_throws_a_TimeoutException()
        {
            var o = TestWorker.Echo("--echo-delay-ms", "3000");
            o.RequestTimeout = TimeSpan.FromMilliseconds(300);
            using (var client = LlamaShmClient.Start(o))
            {
                var started = DateTime.UtcNow;
                Task<Response> t = client.SendRequestAsync("late", "s");
                var e = Assert.Catch<TimeoutException>(() => TestWorker.Within(t, Bound, "the timed-out request"));
                Assert.That(e, Is.InstanceOf<LlamaShmTimeoutException>());
                Assert.That(((ILlamaShmError)e).Status, Is.EqualTo(LshmStatus.Timeout));
                Assert.That(DateTime.UtcNow - started, Is.LessThan(TimeSpan.FromMilliseconds(2500)), "before the answer came");
            }
        }

        [Test, Timeout(60000)]
        public void Concurrent_requests_run_one_at_a_time_and_each_gets_its_own_answer()
        {
            using (var client = TestWorker.Paced(500))
            {
                var tasks = new Task<Response>[6];
                for (int i = 0; i < tasks.Length; i++)
                    tasks[i] = client.SendRequestAsync("user " + i, "system " + i);
                for (int i = 0; i < tasks.Length; i++)
                    Assert.That(TestWorker.Within(tasks[i], Bound, "request " + i).Text, Is.EqualTo("system " + i + "\nuser " + i));
            }
        }
    }
}
