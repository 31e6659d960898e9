// Exceptions: what a failed call throws, and the one mapping from an LSHM status to its type.
//
//   Exception
//   ├── LlamaShmClientException (ILlamaShmError)    any other failed call: Status says which
//   │   ├── WorkerNotFoundException                 LSHM_E_WORKER_NOT_FOUND
//   │   ├── WorkerStartupException                  LSHM_E_STARTUP
//   │   ├── WorkerNotRunningException               LSHM_E_ATTACH (Attach: nobody serves the prefix)
//   │   ├── WorkerDiedException                     LSHM_E_WORKER_DIED
//   │   │   └── RestartFailedException              LSHM_E_RESTART_FAILED
//   │   ├── PromptTooLongException                  LSHM_E_PROMPT_TOO_LONG
//   │   ├── PromptEncodingException                 LSHM_E_ENCODE
//   │   ├── AnswerTooLongException                  LSHM_E_ANSWER_TOO_LONG
//   │   ├── WorkerBusyException                     LSHM_E_BUSY
//   │   ├── InvalidConstraintException              LSHM_E_INVALID_CONSTRAINT
//   │   ├── UnsupportedException                    LSHM_E_UNSUPPORTED
//   │   ├── RequestTooLargeException                LSHM_E_REQUEST_TOO_LARGE
//   │   ├── EngineException                         LSHM_E_ENGINE
//   │   ├── ClientClosedException                   LSHM_E_CLOSED
//   │   └── ShutdownException                       LSHM_E_SHUTDOWN
//   ├── IncompatibleLibraryException                the library's ABI is not 5
//   ├── TimeoutException
//   │   └── LlamaShmTimeoutException (ILlamaShmError) LSHM_E_TIMEOUT
//   └── OperationCanceledException
//       └── RequestCanceledException                the answer ended cancelled (PartialResponse)
//
// Timeouts and cancellations derive from the BCL's types so that code catching TimeoutException or
// OperationCanceledException (as Task-based code does) catches ours; ILlamaShmError gives every
// exception that comes from a status code the same Status property.

using System;
using System.Threading;

namespace LlamaShm
{
    /// <summary>An exception that comes from a failed call into the C library: it carries the
    /// call's status code. Implemented by <see cref="LlamaShmClientException"/> (and its
    /// subclasses) and by <see cref="LlamaShmTimeoutException"/>.</summary>
    public interface ILlamaShmError
    {
        /// <summary>The LSHM_E_* status the library returned.</summary>
        LshmStatus Status { get; }
    }

    /// <summary>A failed call into the C library other than a timeout: <see cref="Status"/> is
    /// its code and the message is the library's. The subclasses name the failures a caller is
    /// likely to handle.</summary>
    public class LlamaShmClientException : Exception, ILlamaShmError
    {
        /// <summary>The LSHM_E_* status the library returned.</summary>
        public LshmStatus Status { get; private set; }

        /// <summary>An exception for <paramref name="status"/> with the library's
        /// <paramref name="message"/>.</summary>
        public LlamaShmClientException(LshmStatus status, string message) : base(message)
        {
            Status = status;
        }
    }

    /// <summary>The worker binary is missing, not found or not executable (LSHM_E_WORKER_NOT_FOUND).</summary>
    public class WorkerNotFoundException : LlamaShmClientException
    {
        /// <summary>With the library's message (it names the path).</summary>
        public WorkerNotFoundException(string message) : base(LshmStatus.WorkerNotFound, message) { }
    }

    /// <summary>The worker could not start: it exited, or was not ready within the start-up
    /// timeout (LSHM_E_STARTUP).</summary>
    public class WorkerStartupException : LlamaShmClientException
    {
        /// <summary>With the library's message (it says why, e.g. the worker's exit status).</summary>
        public WorkerStartupException(string message) : base(LshmStatus.Startup, message) { }
    }

    /// <summary><see cref="LlamaShmClient.Attach"/> found no usable worker under the prefix
    /// (LSHM_E_ATTACH): its objects are missing — no standalone worker serves it (start one
    /// with <c>llama-shm-worker --prefix P</c>) — or untrusted (another owner, a mode wider than
    /// 0600) or malformed.</summary>
    public class WorkerNotRunningException : LlamaShmClientException
    {
        /// <summary>With the library's message (it names the prefix and the object).</summary>
        public WorkerNotRunningException(string message) : base(LshmStatus.Attach, message) { }
    }

    /// <summary>The worker died during the request (LSHM_E_WORKER_DIED). Without a restart
    /// policy the client is closed afterwards: later requests throw
    /// <see cref="ClientClosedException"/>.</summary>
    public class WorkerDiedException : LlamaShmClientException
    {
        /// <summary>With the library's message (it names the exit status or signal).</summary>
        public WorkerDiedException(string message) : this(LshmStatus.WorkerDied, message) { }

        /// <summary>For a subclass with its own status.</summary>
        protected WorkerDiedException(LshmStatus status, string message) : base(status, message) { }
    }

    /// <summary>The worker died and the restart policy could not bring up a new one
    /// (LSHM_E_RESTART_FAILED).</summary>
    public class RestartFailedException : WorkerDiedException
    {
        /// <summary>With the library's message.</summary>
        public RestartFailedException(string message) : base(LshmStatus.RestartFailed, message) { }
    }

    /// <summary>The prompt does not fit in the model's context (LSHM_E_PROMPT_TOO_LONG).</summary>
    public class PromptTooLongException : LlamaShmClientException
    {
        /// <summary>With the library's message.</summary>
        public PromptTooLongException(string message) : base(LshmStatus.PromptTooLong, message) { }
    }

    /// <summary>Under <see cref="PromptPolicy.Strict"/>, a prompt that does not fit the wire
    /// whole (LSHM_E_ENCODE).</summary>
    public class PromptEncodingException : LlamaShmClientException
    {
        /// <summary>With the library's message (it names the prompt and its length).</summary>
        public PromptEncodingException(string message) : base(LshmStatus.Encode, message) { }
    }

    /// <summary>The answer grew past <see cref="ClientOptions.MaxAnswerBytes"/>; the request was
    /// cancelled (LSHM_E_ANSWER_TOO_LONG).</summary>
    public class AnswerTooLongException : LlamaShmClientException
    {
        /// <summary>With the library's message.</summary>
        public AnswerTooLongException(string message) : base(LshmStatus.AnswerTooLong, message) { }
    }

    /// <summary>Every slot of the shared worker is busy and its admission queue is full
    /// (the worker's --max-queue): nothing was sent (LSHM_E_BUSY). Retry later.</summary>
    public class WorkerBusyException : LlamaShmClientException
    {
        /// <summary>With the library's message (it says how many wait).</summary>
        public WorkerBusyException(string message) : base(LshmStatus.Busy, message) { }
    }

    /// <summary>The worker cannot compile the request's JSON schema or grammar
    /// (<see cref="RequestOptions.JsonSchema"/>, <see cref="RequestOptions.Grammar"/>): nothing
    /// was generated (LSHM_E_INVALID_CONSTRAINT).</summary>
    public class InvalidConstraintException : LlamaShmClientException
    {
        /// <summary>With the library's message (the worker's reason).</summary>
        public InvalidConstraintException(string message) : base(LshmStatus.InvalidConstraint, message) { }
    }

    /// <summary>The worker cannot do what the request asks (LSHM_E_UNSUPPORTED): a worker
    /// without a request area (a seed-era one) and a conversation, an engine without
    /// constraints (the echo engine and a schema) or without embeddings.</summary>
    public class UnsupportedException : LlamaShmClientException
    {
        /// <summary>With the library's message (it says what is missing).</summary>
        public UnsupportedException(string message) : base(LshmStatus.Unsupported, message) { }
    }

    /// <summary>The request does not fit the worker's request area (1 MiB of messages, schema
    /// or texts): nothing was sent (LSHM_E_REQUEST_TOO_LARGE).</summary>
    public class RequestTooLargeException : LlamaShmClientException
    {
        /// <summary>With the library's message (it says how many bytes it needs).</summary>
        public RequestTooLargeException(string message) : base(LshmStatus.RequestTooLarge, message) { }
    }

    /// <summary>The worker's engine failed (LSHM_E_ENGINE).</summary>
    public class EngineException : LlamaShmClientException
    {
        /// <summary>With the library's message.</summary>
        public EngineException(string message) : base(LshmStatus.Engine, message) { }
    }

    /// <summary>The native client is closed, e.g. after its worker died (LSHM_E_CLOSED). (A
    /// disposed <see cref="LlamaShmClient"/> throws <see cref="ObjectDisposedException"/>.)</summary>
    public class ClientClosedException : LlamaShmClientException
    {
        /// <summary>With the library's message (it says why the client closed).</summary>
        public ClientClosedException(string message) : base(LshmStatus.Closed, message) { }
    }

    /// <summary><see cref="LlamaShmClient.Shutdown"/> was not clean: the worker had to be killed
    /// or exited with a failure (LSHM_E_SHUTDOWN). The client is released anyway.</summary>
    public class ShutdownException : LlamaShmClientException
    {
        /// <summary>With the library's message.</summary>
        public ShutdownException(string message) : base(LshmStatus.Shutdown, message) { }
    }

    /// <summary>The request timeout (<see cref="ClientOptions.RequestTimeout"/>) passed
    /// (LSHM_E_TIMEOUT).</summary>
    public class LlamaShmTimeoutException : TimeoutException, ILlamaShmError
    {
        /// <summary>Always <see cref="LshmStatus.Timeout"/>.</summary>
        public LshmStatus Status { get { return LshmStatus.Timeout; } }

        /// <summary>With the library's message.</summary>
        public LlamaShmTimeoutException(string message) : base(message) { }
    }

    /// <summary>The answer ended because it was cancelled: by the call's CancellationToken, by
    /// <see cref="LlamaShmClient.Cancel"/>, by <see cref="LlamaShmClient.Dispose"/> during the
    /// call, or because the worker is shutting down. <see cref="PartialResponse"/> holds what was
    /// generated until then.</summary>
    public class RequestCanceledException : OperationCanceledException
    {
        /// <summary>The answer up to the cancel (<see cref="Response.Finish"/> is
        /// <see cref="FinishReason.Cancelled"/>), or null if the request was never sent (the
        /// token was already cancelled).</summary>
        public Response PartialResponse { get; private set; }

        /// <summary>A cancellation with <paramref name="partial"/> (may be null) observed on
        /// <paramref name="token"/> (CancellationToken.None if the token did not cause it).</summary>
        public RequestCanceledException(string message, Response partial, CancellationToken token)
            : base(message, token)
        {
            PartialResponse = partial;
        }
    }

    /// <summary>The loaded libllama_shm_ffi is not the ABI this assembly was written for: it
    /// would read and write the structs at the wrong offsets, so it is refused.</summary>
    public class IncompatibleLibraryException : Exception
    {
        /// <summary>The ABI version the loaded library reports (0 if it has no
        /// lshm_abi_version at all, i.e. it predates ABI 2).</summary>
        public uint LibraryAbiVersion { get; private set; }

        /// <summary>The ABI version this assembly needs (5).</summary>
        public uint ExpectedAbiVersion { get; private set; }

        /// <summary>A refusal of a library reporting <paramref name="found"/>.</summary>
        public IncompatibleLibraryException(uint found, uint expected, string message, Exception inner = null)
            : base(message, inner)
        {
            LibraryAbiVersion = found;
            ExpectedAbiVersion = expected;
        }
    }

    /// <summary>The exception for a failed status: the one mapping of this library.</summary>
    internal static class StatusErrors
    {
        internal static Exception For(int code, string message)
        {
            var status = (LshmStatus)code;
            if (string.IsNullOrEmpty(message))
                message = Utf8.FromNativeZ(NativeMethods.lshm_status_message(code)) ?? ("status " + code);
            switch (status)
            {
                case LshmStatus.WorkerNotFound: return new WorkerNotFoundException(message);
                case LshmStatus.Startup: return new WorkerStartupException(message);
                case LshmStatus.Attach: return new WorkerNotRunningException(message);
                case LshmStatus.Timeout: return new LlamaShmTimeoutException(message);
                case LshmStatus.WorkerDied: return new WorkerDiedException(message);
                case LshmStatus.RestartFailed: return new RestartFailedException(message);
                case LshmStatus.PromptTooLong: return new PromptTooLongException(message);
                case LshmStatus.Encode: return new PromptEncodingException(message);
                case LshmStatus.AnswerTooLong: return new AnswerTooLongException(message);
                case LshmStatus.Busy: return new WorkerBusyException(message);
                case LshmStatus.InvalidConstraint: return new InvalidConstraintException(message);
                case LshmStatus.Unsupported: return new UnsupportedException(message);
                case LshmStatus.RequestTooLarge: return new RequestTooLargeException(message);
                case LshmStatus.Engine: return new EngineException(message);
                case LshmStatus.Closed: return new ClientClosedException(message);
                case LshmStatus.Shutdown: return new ShutdownException(message);
                default: return new LlamaShmClientException(status, message);
            }
        }

        /// <summary>Returns if <paramref name="code"/> is LSHM_OK (freeing <paramref name="error"/>
        /// either way), else throws its exception.</summary>
        internal static void Check(int code, IntPtr error)
        {
            string message = Utf8.TakeError(error);
            if (code != (int)LshmStatus.Ok)
                throw For(code, message);
        }
    }
}
