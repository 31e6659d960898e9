// LshmStatus: the C ABI's status codes (LSHM_OK, LSHM_E_* of llama_shm.h) as one enum, carried by
// every exception of this library that comes from a failed call (ILlamaShmError.Status).

namespace LlamaShm
{
    /// <summary>A status code of the llama-shm C ABI (the <c>LSHM_E_*</c> values of
    /// <c>llama_shm.h</c>).</summary>
    public enum LshmStatus
    {
        /// <summary>LSHM_OK: success.</summary>
        Ok = 0,
        /// <summary>LSHM_E_INVALID_ARGUMENT: a required pointer was NULL, or a bad value.</summary>
        InvalidArgument = 1,
        /// <summary>LSHM_E_INVALID_UTF8: a string argument is not valid UTF-8.</summary>
        InvalidUtf8 = 2,
        /// <summary>LSHM_E_PANIC: an internal error (a bug in the library).</summary>
        Panic = 3,
        /// <summary>LSHM_E_NO_MEMORY: allocating a returned string failed.</summary>
        NoMemory = 4,
        /// <summary>LSHM_E_WORKER_NOT_FOUND: the worker binary is missing or not executable.</summary>
        WorkerNotFound = 5,
        /// <summary>LSHM_E_STARTUP: the worker could not start (it exited, or was not ready in time).</summary>
        Startup = 6,
        /// <summary>LSHM_E_ENCODE: a prompt could not be encoded (strict policy: too long, or a NUL).</summary>
        Encode = 7,
        /// <summary>LSHM_E_TIMEOUT: the request timeout passed.</summary>
        Timeout = 8,
        /// <summary>LSHM_E_WORKER_DIED: the worker died during the request.</summary>
        WorkerDied = 9,
        /// <summary>LSHM_E_UNAUTHORIZED: the worker refused the request's token.</summary>
        Unauthorized = 10,
        /// <summary>LSHM_E_PROMPT_TOO_LONG: the prompt does not fit in the model's context.</summary>
        PromptTooLong = 11,
        /// <summary>LSHM_E_ENGINE: the worker's engine failed.</summary>
        Engine = 12,
        /// <summary>LSHM_E_BAD_REQUEST: the worker judged the request malformed.</summary>
        BadRequest = 13,
        /// <summary>LSHM_E_SHUTTING_DOWN: the worker is shutting down.</summary>
        ShuttingDown = 14,
        /// <summary>LSHM_E_UNKNOWN_STATUS: the worker answered with an unknown status.</summary>
        UnknownStatus = 15,
        /// <summary>LSHM_E_RESTART_FAILED: a dead worker could not be restarted.</summary>
        RestartFailed = 16,
        /// <summary>LSHM_E_CORRUPT: the response was corrupted in shared memory (retry).</summary>
        Corrupt = 17,
        /// <summary>LSHM_E_CLOSED: the client is closed (e.g. after its worker died).</summary>
        Closed = 18,
        /// <summary>LSHM_E_OS: an OS call failed.</summary>
        Os = 19,
        /// <summary>LSHM_E_SHUTDOWN: the shutdown was not clean (worker killed or failed).</summary>
        Shutdown = 20,
        /// <summary>LSHM_E_ANSWER_TOO_LONG: the answer passed the client's bound (request cancelled).</summary>
        AnswerTooLong = 21,
        /// <summary>LSHM_E_BUSY: every slot of the shared worker is busy and its queue is full.</summary>
        Busy = 22,
        /// <summary>LSHM_E_ATTACH: no usable worker under the prefix given to
        /// <c>lshm_client_attach</c> (its objects are missing, untrusted or malformed).</summary>
        Attach = 23,
        /// <summary>LSHM_E_INVALID_CONSTRAINT: the worker cannot compile the request's JSON schema
        /// or grammar; nothing was generated.</summary>
        InvalidConstraint = 24,
        /// <summary>LSHM_E_UNSUPPORTED: the worker cannot do what the request asks (no request
        /// area, no constraints, no embeddings).</summary>
        Unsupported = 25,
        /// <summary>LSHM_E_REQUEST_TOO_LARGE: the request does not fit the worker's request area;
        /// nothing was sent.</summary>
        RequestTooLarge = 26,
    }
}
