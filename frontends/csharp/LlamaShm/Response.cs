// Response: one answer and how it ended (lshm_response), as immutable .NET values.

using System;

namespace LlamaShm
{
    /// <summary>Why an answer ended (LSHM_FINISH_*).</summary>
    public enum FinishReason
    {
        /// <summary>Not reported (a seed-mode worker).</summary>
        Unknown = 0,
        /// <summary>The engine finished its answer.</summary>
        Stop = 1,
        /// <summary>A length limit ended it (<see cref="RequestOptions.MaxTokens"/>, the worker's).</summary>
        Length = 2,
        /// <summary>Cancelled (a cancel, or the worker is shutting down).</summary>
        Cancelled = 3,
        /// <summary>The request's <see cref="RequestOptions.Deadline"/> passed.</summary>
        Deadline = 4,
        /// <summary>The engine failed part-way.</summary>
        Error = 5,
    }

    /// <summary>What a request cost, as the worker counted it.</summary>
    public sealed class Usage
    {
        /// <summary>Tokens in the evaluated prompt (cached ones included).</summary>
        public int PromptTokens { get; private set; }

        /// <summary>Tokens generated.</summary>
        public int GeneratedTokens { get; private set; }

        /// <summary>Prompt tokens whose KV cache was reused from the previous request.</summary>
        public int CachedTokens { get; private set; }

        /// <summary>Time spent on the prompt.</summary>
        public TimeSpan PromptTime { get; private set; }

        /// <summary>Time spent generating.</summary>
        public TimeSpan GenerationTime { get; private set; }

        internal Usage(int prompt, int generated, int cached, TimeSpan promptTime, TimeSpan generationTime)
        {
            PromptTokens = prompt;
            GeneratedTokens = generated;
            CachedTokens = cached;
            PromptTime = promptTime;
            GenerationTime = generationTime;
        }
    }

    /// <summary>An answer: its text, why it ended, and its usage.</summary>
    public sealed class Response
    {
        /// <summary>The answer (for a cancelled or deadline-ended request: what came until then).</summary>
        public string Text { get; private set; }

        /// <summary>Why the answer ended.</summary>
        public FinishReason Finish { get; private set; }

        /// <summary>Whether the answer was cut at the wire's response limit.</summary>
        public bool Truncated { get; private set; }

        /// <summary>The request's sequence number on the wire (0 with a seed-mode worker).</summary>
        public ulong Sequence { get; private set; }

        /// <summary>Token counts and times.</summary>
        public Usage Usage { get; private set; }

        /// <summary>Messages dropped from the front of a conversation to fit the model's context
        /// (<see cref="ChatOptions.DropOldest"/>); 0 otherwise.</summary>
        public int DroppedMessages { get; private set; }

        internal Response(string text, FinishReason finish, bool truncated, ulong sequence, Usage usage,
                          int droppedMessages)
        {
            Text = text;
            Finish = finish;
            Truncated = truncated;
            Sequence = sequence;
            Usage = usage;
            DroppedMessages = droppedMessages;
        }

        internal static Response FromNative(ref NativeMethods.LshmResponse r, ref NativeMethods.LshmResponseExtras x)
        {
            var usage = new Usage(Clamp(r.prompt_tokens), Clamp(r.generated_tokens), Clamp(r.cached_tokens),
                                  Micros(r.prompt_time_us), Micros(r.generation_time_us));
            return new Response(Utf8.FromNative(r.text, r.text_len.ToUInt64()), (FinishReason)r.finish,
                                r.truncated != 0, r.seq, usage, Clamp(x.dropped_messages));
        }

        internal static int Clamp(uint n)
        {
            return n > int.MaxValue ? int.MaxValue : (int)n;
        }

        private static TimeSpan Micros(ulong us)
        {
            return TimeSpan.FromTicks((long)Math.Min(us, (ulong)(TimeSpan.MaxValue.Ticks / 10)) * 10);
        }

        /// <summary>The text.</summary>
        public override string ToString()
        {
            return Text;
        }
    }
}
