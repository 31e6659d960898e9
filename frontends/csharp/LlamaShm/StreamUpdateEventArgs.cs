// StreamUpdateEventArgs: the payload of LlamaShmClient.OnStreamUpdate, shaped like the seed
// LocalLLMService's update (text so far, tokens generated, complete flag).

using System;

namespace LlamaShm
{
    /// <summary>One update of a streaming answer: raised for each piece, then once with
    /// <see cref="IsComplete"/> set when the answer has ended (also when it was cancelled or
    /// ended by its deadline; not when the request failed with an exception).</summary>
    public sealed class StreamUpdateEventArgs : EventArgs
    {
        /// <summary>The whole answer so far (as the seed's update carried it).</summary>
        public string Text { get; private set; }

        /// <summary>The new piece ("" in the final update).</summary>
        public string Chunk { get; private set; }

        /// <summary>While streaming: the pieces received so far (a piece is what the worker
        /// produced since the client last read, normally one token). In the final update: the
        /// worker's count of generated tokens (<see cref="Usage.GeneratedTokens"/>).</summary>
        public int TokensGenerated { get; private set; }

        /// <summary>True in the last update of the answer.</summary>
        public bool IsComplete { get; private set; }

        /// <summary>The final response in the last update; null before.</summary>
        public Response Response { get; private set; }

        internal StreamUpdateEventArgs(string text, string chunk, int tokens, bool complete, Response response)
        {
            Text = text;
            Chunk = chunk;
            TokensGenerated = tokens;
            IsComplete = complete;
            Response = response;
        }
    }
}
