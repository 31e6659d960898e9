// StreamingTests: a paced echo answer arrives in several pieces that concatenate to the final
// text, through each of the ways to receive them (Action, IProgress, OnStreamUpdate), in order,
// on the request's thread; a callback that throws cancels the request and its exception comes out.

using System;
using System.Collections.Generic;
using System.Text;
using System.Threading;
using NUnit.Framework;

namespace LlamaShm.Tests
{
    [TestFixture]
    public class StreamingTests
    {
        private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

        [Test, Timeout(60000)]
        public void Chunks_arrive_as_several_pieces_and_concatenate_to_the_answer()
        {
            string user = "Stream me, please: ünïcödé 🦙 included.";
            string expected = TestWorker.EchoOf(user, "sys");
            using (var client = TestWorker.Paced(2000))
            {
                var chunks = new List<string>();
                var threads = new HashSet<int>();
                Response r = TestWorker.Within(client.StreamAsync(user, "sys", c =>
                {
                    chunks.Add(c);
                    threads.Add(Thread.CurrentThread.ManagedThreadId);
                }), Bound, "StreamAsync");
                Assert.That(r.Text, Is.EqualTo(expected));
                Assert.That(r.Finish, Is.EqualTo(FinishReason.Stop));
                Assert.That(string.Concat(chunks), Is.EqualTo(expected));
                Assert.That(chunks.Count, Is.GreaterThanOrEqualTo(expected.Length / 8), "paced pieces arrive one by one, not all at once");
                Assert.That(chunks.TrueForAll(c => c.Length > 0), "no empty chunk");
                Assert.That(threads.Count, Is.EqualTo(1), "all on the request's thread");
                Assert.That(threads.Contains(Thread.CurrentThread.ManagedThreadId), Is.False, "not on the caller's thread");

                // The synchronous Stream, on the caller's thread.
                var sync = new StringBuilder();
                int me = Thread.CurrentThread.ManagedThreadId;
                bool onCaller = true;
                Response s = client.Stream("again", "s", c => { sync.Append(c); onCaller &= Thread.CurrentThread.ManagedThreadId == me; });
                Assert.That(s.Text, Is.EqualTo("s\nagain"));
                Assert.That(sync.ToString(), Is.EqualTo("s\nagain"));
                Assert.That(onCaller, "Stream calls back on the calling thread");
            }
        }

        [Test, Timeout(60000)]
        public void IProgress_receives_the_pieces_in_order()
        {
            string user = TestWorker.Long(120);
            using (var client = TestWorker.Paced(1000))
            {
                var recorder = new Recorder();
                Response r = TestWorker.Within(client.StreamAsync(user, "p", recorder), Bound, "StreamAsync(IProgress)");
                Assert.That(r.Text, Is.EqualTo(TestWorker.EchoOf(user, "p")));
                Assert.That(string.Concat(recorder.Chunks), Is.EqualTo(r.Text));
                Assert.That(recorder.Chunks.Count, Is.GreaterThan(3));
            }
        }

        [Test, Timeout(60000)]
        public void OnStreamUpdate_carries_the_text_so_far_then_one_complete_update()
        {
            string user = "count the updates";
            string expected = TestWorker.EchoOf(user, "seed");
            using (var client = TestWorker.Paced(2000))
            {
                var updates = new List<StreamUpdateEventArgs>();
                object sender = null;
                client.OnStreamUpdate += (s, e) => { sender = s; updates.Add(e); };
                Response r = TestWorker.Within(client.StreamAsync(user, "seed", CancellationToken.None), Bound, "StreamAsync(events)");

                Assert.That(sender, Is.SameAs(client));
                Assert.That(updates.Count, Is.GreaterThan(2));
                StreamUpdateEventArgs last = updates[updates.Count - 1];
                Assert.That(last.IsComplete, Is.True);
                Assert.That(last.Text, Is.EqualTo(expected));
                Assert.That(last.Response, Is.SameAs(r));
                Assert.That(last.TokensGenerated, Is.EqualTo(r.Usage.GeneratedTokens));
                // The echo engine counts one token per piece of at most 4 bytes.
                Assert.That(r.Usage.GeneratedTokens, Is.GreaterThanOrEqualTo((expected.Length + 3) / 4));

                string soFar = "";
                for (int i = 0; i < updates.Count - 1; i++)
                {
                    StreamUpdateEventArgs u = updates[i];
                    Assert.That(u.IsComplete, Is.False, "only the last update is complete");
                    Assert.That(u.Response, Is.Null);
                    soFar += u.Chunk;
                    Assert.That(u.Text, Is.EqualTo(soFar), "Text is the answer so far");
                    Assert.That(u.TokensGenerated, Is.EqualTo(i + 1));
                }
                Assert.That(soFar, Is.EqualTo(expected));

                // Not raised by whole-answer requests.
                updates.Clear();
                client.SendRequest("quiet", "s");
                Assert.That(updates, Is.Empty);
            }
        }

        [Test, Timeout(60000)]
        public void A_callback_that_throws_cancels_the_request_and_its_exception_comes_out()
        {
            string user = TestWorker.Long(2000); // 500 pieces of 20 ms: 10 s if not cancelled
            using (var client = TestWorker.Paced(20000))
            {
                int calls = 0;
                var started = DateTime.UtcNow;
                var e = Assert.Throws<InvalidTimeZoneException>(() => TestWorker.Within(
                    client.StreamAsync(user, "s", c => { if (++calls == 3) throw new InvalidTimeZoneException("from the callback"); }),
                    Bound, "StreamAsync with a throwing callback"));
                Assert.That(e.Message, Is.EqualTo("from the callback"));
                Assert.That(calls, Is.EqualTo(3), "no callback after the one that threw");
                Assert.That(DateTime.UtcNow - started, Is.LessThan(TimeSpan.FromSeconds(4)), "the request was cancelled (it takes 10 s)");
                Assert.That(client.SendRequest("after", "s").Text, Is.EqualTo("s\nafter"), "the client still works");
            }
        }

        [Test, Timeout(60000)]
        public void A_callback_may_not_start_a_request_on_its_own_client()
        {
            using (var client = TestWorker.Paced(1000))
            {
                Exception inner = null;
                Assert.Throws<InvalidOperationException>(() => client.Stream("re-entrant", "s", c =>
                {
                    try { client.SendRequest("inside", "s"); }
                    catch (Exception x) { inner = x; throw; }
                }));
                Assert.That(inner, Is.InstanceOf<InvalidOperationException>());
            }
        }

        [Test, Timeout(60000)]
        public void A_callback_may_not_start_an_async_request_on_its_own_client_either()
        {
            // Waiting for such a task in the callback would deadlock (it waits for the request
            // whose callback waits for it), so the ...Async methods refuse on the spot too.
            using (var client = TestWorker.Paced(1000))
            {
                var refused = new List<string>();
                var accepted = new List<string>();
                Action<string, Func<object>> attempt = (name, start) =>
                {
                    try
                    {
                        start();
                        accepted.Add(name);
                    }
                    catch (InvalidOperationException)
                    {
                        refused.Add(name);
                    }
                };
                bool first = true;
                Response r = client.Stream("re-entrant", "s", c =>
                {
                    if (!first)
                        return;
                    first = false;
                    attempt("SendRequestAsync", () => client.SendRequestAsync("inside", "s"));
                    attempt("StreamAsync(Action)", () => client.StreamAsync("inside", "s", x => { }));
                    attempt("StreamAsync(IProgress)", () => client.StreamAsync("inside", "s", new Recorder()));
                    attempt("StreamAsync(token)", () => client.StreamAsync("inside", "s", CancellationToken.None));
                    attempt("SendRequest", () => client.SendRequest("inside", "s"));
                    attempt("Stream", () => client.Stream("inside", "s"));
                });
                Assert.That(r.Text, Is.EqualTo("s\nre-entrant"), "the refusals did not disturb the request");
                Assert.That(accepted, Is.Empty, "started from a callback");
                Assert.That(refused.Count, Is.EqualTo(6));
                Assert.That(client.SendRequestAsync("after", "s").Result.Text, Is.EqualTo("s\nafter"), "outside a callback it works");
            }
        }
    }
}
