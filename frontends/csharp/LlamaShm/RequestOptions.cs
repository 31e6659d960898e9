// RequestOptions: what one request asks beyond its prompts (lshm_request_options): the budget
// (deadline, max tokens), a JSON schema or grammar the answer must match, a sampling seed.
// ChatOptions adds what only a conversation has: dropping its oldest messages.

using System;

namespace LlamaShm
{
    /// <summary>Limits and constraints of one request. The limits end the answer early without
    /// an error: the response then says why (<see cref="FinishReason.Deadline"/>,
    /// <see cref="FinishReason.Length"/>).</summary>
    public class RequestOptions
    {
        /// <summary>Generation budget counted by the worker; when it passes, the answer so far
        /// comes back with <see cref="FinishReason.Deadline"/>. Null: none (the client's request
        /// timeout still bounds the call, with an exception).</summary>
        public TimeSpan? Deadline { get; set; }

        /// <summary>Most tokens to generate (the answer then ends with
        /// <see cref="FinishReason.Length"/>); null: the worker's own limit.</summary>
        public int? MaxTokens { get; set; }

        /// <summary>A JSON schema (its text) the answer must match; null: none. A worker that
        /// cannot compile it throws <see cref="InvalidConstraintException"/> before generating;
        /// one whose engine has no constraints (the echo engine), <see cref="UnsupportedException"/>.
        /// With <see cref="LlamaShmClient.SendRequest"/> the two prompts then go to the worker as
        /// a system and a user message. At most one of JsonSchema and <see cref="Grammar"/>.</summary>
        public string JsonSchema { get; set; }

        /// <summary>A GBNF grammar (root rule <c>root</c>) the answer must match; null: none. As
        /// <see cref="JsonSchema"/>, which it excludes.</summary>
        public string Grammar { get; set; }

        /// <summary>The sampling seed of this request (the same seed, prompt and worker give the
        /// same answer); null: the worker's own sampler goes on. 0 is refused: on the wire it
        /// means "no seed".</summary>
        public uint? Seed { get; set; }

        internal ulong DeadlineMs()
        {
            return ClientOptions.Milliseconds(Deadline, "Deadline");
        }

        internal uint MaxTokensNative()
        {
            if (!MaxTokens.HasValue)
                return 0;
            if (MaxTokens.Value <= 0)
                throw new ArgumentOutOfRangeException("MaxTokens", MaxTokens.Value, "must be positive (null for the worker's limit)");
            return (uint)MaxTokens.Value;
        }

        internal uint SeedNative()
        {
            if (!Seed.HasValue)
                return 0;
            if (Seed.Value == 0)
                throw new ArgumentOutOfRangeException("Seed", Seed.Value, "must be at least 1 (0 means no seed; use null)");
            return Seed.Value;
        }

        /// <summary>The schema and grammar as NUL-terminated UTF-8 (null for none), checked.</summary>
        internal void Constraint(out byte[] schema, out byte[] grammar)
        {
            if (JsonSchema != null && Grammar != null)
                throw new ArgumentException("give a JsonSchema or a Grammar, not both", "JsonSchema");
            schema = JsonSchema == null ? null : Utf8.ToNative(JsonSchema, "JsonSchema");
            grammar = Grammar == null ? null : Utf8.ToNative(Grammar, "Grammar");
        }
    }

    /// <summary>Options of a conversation (<see cref="LlamaShmClient.Chat"/>): those of every
    /// request, and what to do when it does not fit the model's context.</summary>
    public sealed class ChatOptions : RequestOptions
    {
        /// <summary>A conversation over the context loses its oldest messages (the response's
        /// <see cref="Response.DroppedMessages"/> says how many) instead of throwing
        /// <see cref="PromptTooLongException"/>. Default false.</summary>
        public bool DropOldest { get; set; }
    }
}
