// ChatMessage: one message of a conversation (lshm_message), who wrote it and what it says.

using System;

namespace LlamaShm
{
    /// <summary>Who wrote a message of a conversation (LSHM_ROLE_*).</summary>
    public enum ChatRole
    {
        /// <summary>Instructions: who the model is, how to answer.</summary>
        System = 0,
        /// <summary>The user.</summary>
        User = 1,
        /// <summary>The model (an earlier answer).</summary>
        Assistant = 2,
    }

    /// <summary>One message of a conversation for <see cref="LlamaShmClient.Chat"/>: immutable.</summary>
    public sealed class ChatMessage
    {
        /// <summary>Who wrote it.</summary>
        public ChatRole Role { get; private set; }

        /// <summary>What it says (sent as UTF-8; any length the worker's request area holds).</summary>
        public string Content { get; private set; }

        /// <summary>A message of <paramref name="role"/>.</summary>
        /// <exception cref="ArgumentNullException"><paramref name="content"/> is null.</exception>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="role"/> is not a ChatRole.</exception>
        public ChatMessage(ChatRole role, string content)
        {
            if (content == null)
                throw new ArgumentNullException("content");
            if (role != ChatRole.System && role != ChatRole.User && role != ChatRole.Assistant)
                throw new ArgumentOutOfRangeException("role", role, "not a ChatRole");
            Role = role;
            Content = content;
        }

        /// <summary>A system message.</summary>
        public static ChatMessage System(string content)
        {
            return new ChatMessage(ChatRole.System, content);
        }

        /// <summary>A user message.</summary>
        public static ChatMessage User(string content)
        {
            return new ChatMessage(ChatRole.User, content);
        }

        /// <summary>An assistant message (an earlier answer).</summary>
        public static ChatMessage Assistant(string content)
        {
            return new ChatMessage(ChatRole.Assistant, content);
        }

        /// <summary>"role: content".</summary>
        public override string ToString()
        {
            return Role + ": " + Content;
        }
    }
}
