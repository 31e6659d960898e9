// RequestOptions: the per-request budget (lshm_request's deadline_ms and max_tokens).

using System;

namespace LlamaShm
{
    /// <summary>Limits of one request. Both end the answer early without an error: the
    /// response then says why (<see cref="FinishReason.Deadline"/>, <see cref="FinishReason.Length"/>).</summary>
    public sealed class RequestOptions
    {
        /// <summary>Generation budget counted by the worker; when it passes, the answer so far
        /// comes back with <see cref="FinishReason.Deadline"/>. Null: none (the client's request
        /// timeout still bounds the call, with an exception).</summary>
        public TimeSpan? Deadline { get; set; }

        /// <summary>Most tokens to generate (the answer then ends with
        /// <see cref="FinishReason.Length"/>); null: the worker's own limit.</summary>
        public int? MaxTokens { get; set; }

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
    }
}
