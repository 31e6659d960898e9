// ConversationTests: the ABI 5 calls through LlamaShm.dll against the echo worker, which answers
// a conversation with every message's content, one per line; refuses any JSON schema or grammar
// (UnsupportedException); refuses a request over its 1 MiB request area before sending
// (RequestTooLargeException); embeds a text as 16 numbers (an L2-normalised byte histogram: identical
// texts alike, different texts not); counts whitespace-separated words as tokens. Expected values
// are built from those rules, never taken from the client.

using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using NUnit.Framework;

namespace LlamaShm.Tests
{
    [TestFixture]
    public class ConversationTests
    {
        private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

        private static readonly ChatMessage[] Three =
        {
            ChatMessage.System("Be terse."),
            ChatMessage.User("What is 2+2?"),
            new ChatMessage(ChatRole.Assistant, "4, and héllo 😀"),
        };

        private const string Joined = "Be terse.\nWhat is 2+2?\n4, and héllo 😀";

        /// <summary><paramref name="n"/> words of 6 bytes ("w0000 w0001 ...").</summary>
        private static string Words(int n)
        {
            var s = new StringBuilder();
            for (int i = 0; i < n; i++)
                s.Append("w").Append((i % 10000).ToString("D4")).Append(' ');
            return s.ToString();
        }

        [Test, Timeout(60000)]
        public void A_conversation_is_answered_with_its_contents_one_per_line()
        {
            using (var client = LlamaShmClient.Start(TestWorker.Echo()))
            {
                Response r = client.Chat(Three);
                Assert.That(r.Text, Is.EqualTo(Joined));
                Assert.That(r.Finish, Is.EqualTo(FinishReason.Stop));
                Assert.That(r.DroppedMessages, Is.EqualTo(0));
                Assert.That(r.Sequence, Is.GreaterThan(0UL));

                // DropOldest and a seed change nothing for the echo engine.
                r = client.Chat(Three, new ChatOptions { DropOldest = true, Seed = 7 });
                Assert.That(r.Text, Is.EqualTo(Joined));
                Assert.That(r.DroppedMessages, Is.EqualTo(0));

                Response a = TestWorker.Within(client.ChatAsync(new List<ChatMessage> { ChatMessage.User("async") }), Bound, "ChatAsync");
                Assert.That(a.Text, Is.EqualTo("async"));
                // Two prompts through the options path say nothing was dropped either.
                Assert.That(client.SendRequest("u", "s", new RequestOptions { Seed = 3 }).DroppedMessages, Is.EqualTo(0));
            }
        }

        [Test, Timeout(60000)]
        public void A_conversation_over_4_KiB_is_answered_whole_and_streamed()
        {
            string big = Words(2000); // 12000 bytes: three times the seed's prompt field
            var messages = new[] { ChatMessage.System("sys"), ChatMessage.User(big), ChatMessage.Assistant("tail") };
            string expected = "sys\n" + big + "\ntail";
            using (var client = TestWorker.Paced(200))
            {
                Assert.That(client.Chat(messages).Text, Is.EqualTo(expected));

                var chunks = new List<string>();
                int me = Thread.CurrentThread.ManagedThreadId;
                bool onCaller = true;
                Response s = client.ChatStream(messages, c => { chunks.Add(c); onCaller &= Thread.CurrentThread.ManagedThreadId == me; });
                Assert.That(s.Text, Is.EqualTo(expected));
                Assert.That(string.Concat(chunks), Is.EqualTo(expected));
                Assert.That(chunks.Count, Is.GreaterThanOrEqualTo(100), "paced pieces arrive one by one");
                Assert.That(onCaller, "ChatStream calls back on the calling thread");

                var recorder = new Recorder();
                Response p = TestWorker.Within(client.ChatStreamAsync(messages, recorder), Bound, "ChatStreamAsync(IProgress)");
                Assert.That(p.Text, Is.EqualTo(expected));
                Assert.That(string.Concat(recorder.Chunks), Is.EqualTo(expected));

                var updates = new List<StreamUpdateEventArgs>();
                client.OnStreamUpdate += (sender, e) => updates.Add(e);
                Response u = TestWorker.Within(client.ChatStreamAsync(messages), Bound, "ChatStreamAsync(events)");
                Assert.That(u.Text, Is.EqualTo(expected));
                Assert.That(updates.Last().IsComplete, Is.True);
                Assert.That(updates.Last().Text, Is.EqualTo(expected));

                Assert.That(client.CountTokens(messages), Is.EqualTo(2002));
            }
        }

        [Test, Timeout(60000)]
        public void The_budget_the_deadline_and_a_cancel_apply_to_a_conversation()
        {
            string text = Words(1000);
            var messages = new[] { ChatMessage.User(text) };
            using (var client = TestWorker.Paced(200))
            {
                Response r = client.Chat(messages, new ChatOptions { MaxTokens = 3 });
                Assert.That(r.Finish, Is.EqualTo(FinishReason.Length));
                Assert.That(r.Usage.GeneratedTokens, Is.EqualTo(3));
                Assert.That(text.StartsWith(r.Text, StringComparison.Ordinal) && r.Text.Length <= 12, r.Text);

                r = client.Chat(messages, new ChatOptions { Deadline = TimeSpan.FromMilliseconds(20) });
                Assert.That(r.Finish, Is.EqualTo(FinishReason.Deadline));
                Assert.That(r.Text.Length, Is.LessThan(text.Length));

                using (var cts = new CancellationTokenSource())
                {
                    var e = Assert.Throws<RequestCanceledException>(() =>
                        client.ChatStream(messages, c => cts.Cancel(), null, cts.Token));
                    Assert.That(e.PartialResponse, Is.Not.Null);
                    Assert.That(e.PartialResponse.Finish, Is.EqualTo(FinishReason.Cancelled));
                    Assert.That(text.StartsWith(e.PartialResponse.Text, StringComparison.Ordinal), "a prefix of the answer");
                    Assert.That(e.PartialResponse.Text.Length, Is.LessThan(text.Length));
                }
                Assert.That(client.Chat(Three).Text, Is.EqualTo(Joined), "the client goes on");
            }
        }

        [Test, Timeout(60000)]
        public void A_constraint_on_the_echo_engine_is_unsupported_and_nothing_else()
        {
            var constraints = new[]
            {
                new ChatOptions { JsonSchema = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}" },
                new ChatOptions { Grammar = "root ::= \"yes\" | \"no\"" },
            };
            using (var client = LlamaShmClient.Start(TestWorker.Echo()))
            {
                foreach (ChatOptions o in constraints)
                {
                    var calls = new TestDelegate[]
                    {
                        () => client.Chat(Three, o),
                        () => client.ChatStream(Three, null, o),
                        () => TestWorker.Within(client.ChatAsync(Three, o), Bound, "ChatAsync"),
                        () => client.SendRequest("u", "s", o),
                        () => client.Stream("u", "s", null, o),
                    };
                    foreach (TestDelegate call in calls)
                    {
                        var e = Assert.Throws<UnsupportedException>(call);
                        Assert.That(e.Status, Is.EqualTo(LshmStatus.Unsupported));
                        Assert.That(e, Is.Not.InstanceOf<InvalidConstraintException>());
                        Assert.That(e.Message, Is.Not.Empty);
                    }
                }
                Assert.That(client.Chat(Three).Text, Is.EqualTo(Joined), "the client goes on");
            }
        }

        [Test, Timeout(60000)]
        public void A_request_larger_than_the_request_area_throws_RequestTooLarge_before_sending()
        {
            string huge = new string('x', (1 << 20) + 1); // the area holds 1 MiB, record headers included
            using (var client = LlamaShmClient.Start(TestWorker.Echo()))
            {
                var calls = new TestDelegate[]
                {
                    () => client.Chat(new[] { ChatMessage.User(huge) }),
                    () => client.Embed(new[] { huge }),
                    () => client.CountTokens(huge),
                };
                foreach (TestDelegate call in calls)
                {
                    var e = Assert.Throws<RequestTooLargeException>(call);
                    Assert.That(e.Status, Is.EqualTo(LshmStatus.RequestTooLarge));
                    Assert.That(e.Message, Is.StringContaining("bytes"));
                }
                Assert.That(client.Chat(Three).Text, Is.EqualTo(Joined), "the client goes on");
            }
        }

        [Test, Timeout(60000)]
        public void Embed_gives_one_normalised_vector_per_text()
        {
            using (var client = LlamaShmClient.Start(TestWorker.Echo()))
            {
                float[][] v = client.Embed(new[] { "a b", "a b", "zz" });
                Assert.That(v.Length, Is.EqualTo(3));
                Assert.That(v.All(x => x.Length == 16), "16 numbers each");
                Assert.That(v[1], Is.EqualTo(v[0]));
                Assert.That(v[2], Is.Not.EqualTo(v[0]));
                foreach (float[] x in v)
                    Assert.That(x.Sum(f => (double)f * f), Is.EqualTo(1.0).Within(1e-5));
                Assert.That(client.Embed(new string[0]), Is.Empty);
                float[][] a = TestWorker.Within(client.EmbedAsync(new List<string> { "zz" }), Bound, "EmbedAsync");
                Assert.That(a[0], Is.EqualTo(v[2]));
                Assert.Throws<ArgumentNullException>(() => client.Embed(null));
                Assert.Throws<ArgumentNullException>(() => client.Embed(new string[] { "ok", null }));
                Assert.Throws<ArgumentException>(() => client.Embed(new[] { "a\0b" }));
            }
        }

        [Test, Timeout(60000)]
        public void CountTokens_of_a_text_and_of_a_conversation()
        {
            using (var client = LlamaShmClient.Start(TestWorker.Echo()))
            {
                Assert.That(client.CountTokens("one two three"), Is.EqualTo(3));
                Assert.That(client.CountTokens(""), Is.EqualTo(0));
                Assert.That(client.CountTokens(Three), Is.EqualTo(2 + 3 + 4));
                Assert.That(TestWorker.Within(client.CountTokensAsync("a b c d"), Bound, "CountTokensAsync"), Is.EqualTo(4));
                Assert.That(TestWorker.Within(client.CountTokensAsync(Three), Bound, "CountTokensAsync(messages)"), Is.EqualTo(9));
            }
        }

        [Test, Timeout(60000)]
        public void Arguments_are_checked_before_anything_is_sent()
        {
            Assert.Throws<ArgumentNullException>(() => new ChatMessage(ChatRole.User, null));
            Assert.Throws<ArgumentOutOfRangeException>(() => new ChatMessage((ChatRole)7, "x"));
            using (var client = LlamaShmClient.Start(TestWorker.Echo()))
            {
                Assert.Throws<ArgumentNullException>(() => client.Chat(null));
                Assert.Throws<ArgumentNullException>(() => client.Chat(new ChatMessage[] { ChatMessage.User("ok"), null }));
                Assert.Throws<ArgumentException>(() => client.Chat(new[] { ChatMessage.User("a\0b") }));
                Assert.Throws<ArgumentException>(() => client.ChatAsync(Three, new ChatOptions { JsonSchema = "{}", Grammar = "root ::= x" }));
                Assert.Throws<ArgumentOutOfRangeException>(() => client.Chat(Three, new ChatOptions { Seed = 0 }));
                Assert.Throws<ArgumentOutOfRangeException>(() => client.Chat(Three, new ChatOptions { MaxTokens = 0 }));
                Assert.Throws<ArgumentNullException>(() => client.ChatStreamAsync(Three, (IProgress<string>)null));
                Assert.Throws<ArgumentNullException>(() => client.CountTokens((string)null));
                // A callback that starts another call on the same client is refused.
                var inner = new List<Exception>();
                client.ChatStream(Three, c =>
                {
                    try
                    {
                        client.Embed(new[] { "x" });
                    }
                    catch (InvalidOperationException e)
                    {
                        inner.Add(e);
                    }
                });
                Assert.That(inner.Count, Is.GreaterThan(0), "Embed from a callback throws InvalidOperationException");
                Assert.That(client.Chat(Three).Text, Is.EqualTo(Joined), "the client goes on");
            }
        }

        [Test]
        public void The_new_statuses_map_to_their_exceptions()
        {
            Assert.That((int)LshmStatus.InvalidConstraint, Is.EqualTo(24));
            Assert.That((int)LshmStatus.Unsupported, Is.EqualTo(25));
            Assert.That((int)LshmStatus.RequestTooLarge, Is.EqualTo(26));
            Assert.That(new InvalidConstraintException("m"), Is.InstanceOf<LlamaShmClientException>());
            Assert.That(new UnsupportedException("m").Status, Is.EqualTo(LshmStatus.Unsupported));
            Assert.That(new RequestTooLargeException("m").Status, Is.EqualTo(LshmStatus.RequestTooLarge));
        }
    }
}
