/*
 * llama_shm.h — C ABI of llama-shm (libllama_shm_ffi.so / libllama_shm_ffi.a).
 *
 * Spawns a llama-shm worker (or attaches to a running one that others share) and exchanges
 * prompts with it over POSIX shared memory.
 *
 *   lshm_client *c = NULL;
 *   const char *argv[] = {"--engine", "echo"};
 *   if (lshm_client_new(NULL, argv, 2, 0, &c, NULL) == LSHM_OK) {
 *       lshm_response r;
 *       if (lshm_request(c, "Hi", "Be terse.", 0, 0, &r, NULL) == LSHM_OK) puts(r.text);
 *       lshm_response_free(&r);
 *
 *       // A conversation: any number of messages, through the worker's request area.
 *       lshm_message m[] = {{LSHM_ROLE_SYSTEM, 0, "Be terse.", 9}, {LSHM_ROLE_USER, 0, "Hi", 2}};
 *       lshm_response_extras x = {sizeof x, 0};
 *       if (lshm_chat(c, m, 2, NULL, &r, &x, NULL) == LSHM_OK) puts(r.text);
 *       lshm_response_free(&r);
 *       lshm_client_shutdown(c, NULL);
 *   }
 *
 *   // A standalone `llama-shm-worker --prefix P` serves several processes:
 *   if (lshm_client_attach("P", NULL, &c, NULL) == LSHM_OK) { ...; lshm_client_free(c); }
 *
 * Conventions:
 *  - Every function that can fail returns an lshm_status (0 = LSHM_OK). A NULL where a
 *    pointer is required gives LSHM_E_INVALID_ARGUMENT, never a crash; a string that is not
 *    UTF-8 gives LSHM_E_INVALID_UTF8; an internal panic gives LSHM_E_PANIC.
 *  - `out_error` parameters are optional (may be NULL). On failure they receive a message the
 *    caller owns (free it with lshm_string_free); on success they are set to NULL.
 *  - Every string this library returns is malloc'ed and owned by the caller: release it with
 *    lshm_string_free (plain free() works too); so are the floats of lshm_embeddings
 *    (lshm_embeddings_free). lshm_version and lshm_status_message return
 *    static strings that must not be freed.
 *  - A client may be used from several threads; its calls then run one after the other. Only
 *    an lshm_canceller acts while a request is running.
 *  - lshm_client_new*, lshm_client_attach, every request (lshm_request*, lshm_stream*, lshm_chat*,
 *    lshm_embed, lshm_count_*), lshm_client_shutdown and lshm_client_free block SIGPIPE on the
 *    calling thread while they run and discard one raised meanwhile (a write of the library's to a pipe whose reader is gone gets EPIPE instead), so
 *    a program that keeps SIGPIPE's default action is not killed by them.
 *
 * Build: cargo build --release -p llama-shm-ffi; link with -lllama_shm_ffi -lpthread.
 */
#ifndef LLAMA_SHM_H
#define LLAMA_SHM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes: 0 is success. */
typedef int32_t lshm_status;
enum {
    LSHM_OK = 0,
    LSHM_E_INVALID_ARGUMENT = 1, /* a required pointer was NULL, or a bad value */
    LSHM_E_INVALID_UTF8 = 2,     /* a string argument is not valid UTF-8 */
    LSHM_E_PANIC = 3,            /* internal error (a bug in the library) */
    LSHM_E_NO_MEMORY = 4,        /* allocating a returned string failed */
    LSHM_E_WORKER_NOT_FOUND = 5, /* worker binary missing, not found, or not executable */
    LSHM_E_STARTUP = 6,          /* the worker could not start (exited, not ready in time) */
    LSHM_E_ENCODE = 7,           /* a prompt could not be encoded */
    LSHM_E_TIMEOUT = 8,          /* the request timeout passed */
    LSHM_E_WORKER_DIED = 9,      /* the worker died during the request */
    LSHM_E_UNAUTHORIZED = 10,    /* the worker refused the request's token */
    LSHM_E_PROMPT_TOO_LONG = 11, /* the prompt does not fit in the model's context */
    LSHM_E_ENGINE = 12,          /* the worker's engine failed */
    LSHM_E_BAD_REQUEST = 13,     /* the worker judged the request malformed */
    LSHM_E_SHUTTING_DOWN = 14,   /* the worker is shutting down */
    LSHM_E_UNKNOWN_STATUS = 15,  /* the worker answered with an unknown status */
    LSHM_E_RESTART_FAILED = 16,  /* a dead worker could not be restarted */
    LSHM_E_CORRUPT = 17,         /* the response was corrupted in shared memory (retry) */
    LSHM_E_CLOSED = 18,          /* the client is closed (e.g. after its worker died) */
    LSHM_E_OS = 19,              /* an OS call failed */
    LSHM_E_SHUTDOWN = 20,        /* shutdown was not clean (worker killed or failed) */
    LSHM_E_ANSWER_TOO_LONG = 21, /* the answer passed the client's bound (request cancelled) */
    LSHM_E_BUSY = 22,            /* every slot of the shared worker is busy and its queue is full */
    LSHM_E_ATTACH = 23,          /* lshm_client_attach: no usable worker under that prefix (its
                                    objects are missing, untrusted or malformed) */
    LSHM_E_INVALID_CONSTRAINT = 24, /* the JSON schema or grammar cannot be compiled (ABI 5) */
    LSHM_E_UNSUPPORTED = 25,        /* the worker cannot do what the request asks: no request
                                       area, no constraints, no embeddings (ABI 5) */
    LSHM_E_REQUEST_TOO_LARGE = 26   /* the request does not fit the worker's 1 MiB request area;
                                       nothing was sent (ABI 5) */
};

/* Why an answer ended: lshm_response.finish. */
enum {
    LSHM_FINISH_UNKNOWN = 0,   /* not reported (seed-mode worker) */
    LSHM_FINISH_STOP = 1,      /* the engine finished its answer */
    LSHM_FINISH_LENGTH = 2,    /* a length limit ended it (max_tokens) */
    LSHM_FINISH_CANCELLED = 3, /* lshm_cancel (or the worker is shutting down) */
    LSHM_FINISH_DEADLINE = 4,  /* the request's deadline_ms passed */
    LSHM_FINISH_ERROR = 5      /* the engine failed part-way */
};

/* The ABI of this header: compare with lshm_abi_version() and refuse a library that differs.
 * 4 added lshm_client_attach and LSHM_E_ATTACH; 5 added conversations (lshm_chat*), per-request
 * options (lshm_request_with, lshm_stream_with), embeddings (lshm_embed), token counts and
 * LSHM_E_INVALID_CONSTRAINT, LSHM_E_UNSUPPORTED, LSHM_E_REQUEST_TOO_LARGE. */
enum {
    LSHM_ABI_VERSION = 5
};

/* lshm_options.prompt_policy */
enum {
    LSHM_POLICY_TRUNCATE = 0, /* cut a prompt that does not fit on a character boundary (default) */
    LSHM_POLICY_STRICT = 1    /* refuse a prompt that does not fit whole or holds a NUL (LSHM_E_ENCODE) */
};

/* How a client is started and bounded. Start from lshm_options_default() and change what you
 * need; a zero field means the library's default. lshm_client_attach uses prompt_policy,
 * request_timeout_ms and max_answer_bytes only (it starts and restarts no worker). */
typedef struct lshm_options {
    uint32_t struct_size;            /* sizeof(lshm_options): another size is LSHM_E_INVALID_ARGUMENT */
    uint32_t prompt_policy;          /* an LSHM_POLICY_* value */
    uint64_t startup_timeout_ms;     /* deadline for the worker's start-up; 0 = 120 s */
    uint64_t request_timeout_ms;     /* bound on each request; 0 = 600 s */
    uint64_t max_answer_bytes;       /* most bytes one answer may have; 0 = 8 MiB */
    uint32_t restart_max_attempts;   /* spawn attempts after the worker died, per outage; 0 = never */
    uint32_t reserved;               /* 0 */
    uint64_t restart_backoff_ms;     /* wait before the second attempt of an outage (doubling) */
    uint64_t restart_max_backoff_ms; /* longest wait between attempts */
} lshm_options;

/* lshm_message.role (ABI 5) */
enum {
    LSHM_ROLE_SYSTEM = 0,   /* instructions: who the model is, how to answer */
    LSHM_ROLE_USER = 1,     /* the user */
    LSHM_ROLE_ASSISTANT = 2 /* the model (an earlier answer) */
};

/* One message of a conversation (ABI 5). `content` is `content_len` bytes of UTF-8 (no NUL
 * needed); it may be NULL when content_len is 0. */
typedef struct lshm_message {
    uint32_t role;       /* an LSHM_ROLE_* value */
    uint32_t reserved;   /* 0 */
    const char *content; /* UTF-8, content_len bytes */
    size_t content_len;  /* its length in bytes */
} lshm_message;

/* What a request asks beyond its prompts (ABI 5). Start from lshm_request_options_default()
 * and change what you need; a zero field or a NULL string means none. The strings are read
 * during the call only. */
typedef struct lshm_request_options {
    uint32_t struct_size;    /* sizeof(lshm_request_options): another size is LSHM_E_INVALID_ARGUMENT */
    uint32_t max_tokens;     /* most tokens to generate; 0 = the worker's own limit */
    uint64_t deadline_ms;    /* generation budget; 0 = none (LSHM_FINISH_DEADLINE when it passes) */
    uint32_t seed;           /* sampling seed of this request; 0 = none (the worker's sampler goes on) */
    uint32_t drop_oldest;    /* 1: a conversation over the context loses its oldest messages instead
                                of failing with LSHM_E_PROMPT_TOO_LONG; 0: it fails */
    const char *json_schema; /* NUL-terminated JSON schema the answer must match; NULL = none */
    const char *grammar;     /* NUL-terminated GBNF grammar (root rule `root`); NULL = none. At
                                most one of json_schema and grammar */
} lshm_request_options;

/* What a request reports beyond lshm_response (ABI 5): pass NULL if not wanted. The caller sets
 * struct_size = sizeof(lshm_response_extras) (another size is LSHM_E_INVALID_ARGUMENT and
 * nothing is sent); the library fills the rest, zeros after a failed call. */
typedef struct lshm_response_extras {
    uint32_t struct_size;      /* set by the caller */
    uint32_t dropped_messages; /* messages dropped from the front of the conversation (drop_oldest) */
} lshm_response_extras;

/* Vectors of lshm_embed (ABI 5). `values` is the caller's: release it with lshm_embeddings_free
 * (or free). After a failed call every field is 0. */
typedef struct lshm_embeddings {
    float *values; /* count * dim floats, vector i at values + i * dim; NULL when count is 0 */
    size_t count;  /* how many vectors: one per text */
    size_t dim;    /* numbers per vector */
} lshm_embeddings;

/* Opaque handles. */
typedef struct lshm_client lshm_client;
typedef struct lshm_canceller lshm_canceller;

/* The result of a request. `text` is the caller's: release it with lshm_response_free (or
 * lshm_string_free). After a failed call `text` is NULL and every field is 0. */
typedef struct lshm_response {
    char *text;                  /* the answer: UTF-8, NUL-terminated */
    size_t text_len;             /* its length in bytes, without the NUL */
    uint32_t finish;             /* an LSHM_FINISH_* value */
    uint32_t truncated;          /* 1 if cut at the response limit */
    uint64_t seq;                /* the request's sequence number */
    uint32_t prompt_tokens;      /* tokens in the evaluated prompt */
    uint32_t generated_tokens;   /* tokens generated */
    uint64_t prompt_time_us;     /* time spent on the prompt */
    uint64_t generation_time_us; /* time spent generating */
    uint32_t cached_tokens;      /* prompt tokens whose KV cache was reused (ABI 3) */
    uint32_t reserved;           /* 0 */
} lshm_response;

/* Streaming callback: `chunk` is `len` bytes of UTF-8 followed by a NUL, valid only during the
 * call. Called on the thread that called lshm_stream. It must return normally (no C++
 * exception, no longjmp) and must not call into the same client (lshm_cancel is fine). */
typedef void (*lshm_chunk_fn)(const char *chunk, size_t len, void *user_data);

/* The library version, e.g. "0.1.0" (static; do not free). */
const char *lshm_version(void);

/* A short description of `code` (static; do not free). */
const char *lshm_status_message(lshm_status code);

/* The library's ABI version: LSHM_ABI_VERSION of the header it was built with. */
uint32_t lshm_abi_version(void);

/* The default options: struct_size set, every other field 0. */
lshm_options lshm_options_default(void);

/* Spawns a worker and waits until it is ready (start-up timeout 120 s).
 *   worker: path of llama-shm-worker, or NULL for the default ($LLAMA_SHM_WORKER, else next
 *           to this library, else next to the executable).
 *   argv, argc: extra worker arguments, e.g. {"--engine", "echo"}; argv may be NULL if argc is 0.
 *   request_timeout_ms: bound on each request; 0 = default (600 s).
 *   out_client: receives the new handle (NULL on failure); release it with
 *               lshm_client_shutdown or lshm_client_free.
 * Errors: LSHM_E_INVALID_ARGUMENT, LSHM_E_INVALID_UTF8, LSHM_E_WORKER_NOT_FOUND, LSHM_E_STARTUP. */
lshm_status lshm_client_new(const char *worker, const char *const *argv, size_t argc,
                            uint64_t request_timeout_ms, lshm_client **out_client,
                            char **out_error);

/* lshm_client_new with `options` (NULL: the defaults) instead of a request timeout only.
 * Errors: as lshm_client_new; LSHM_E_INVALID_ARGUMENT also for another struct_size, an unknown
 * prompt_policy or a non-zero reserved field. */
lshm_status lshm_client_new_with(const char *worker, const char *const *argv, size_t argc,
                                 const lshm_options *options, lshm_client **out_client,
                                 char **out_error);

/* Attaches to the running worker that serves `prefix` (a standalone `llama-shm-worker --prefix
 * P [--parallel N] [--max-queue M]`; "llama_cpp" for the seed's names), with `options` (NULL:
 * the defaults). Starts nothing and does not wait: the worker's objects must exist, belong to
 * this user and grant no more than mode 0600. Each request takes a free slot of the worker; when
 * all are busy it waits in the worker's queue (first come, first served; bounded by the request
 * timeout), and fails at once with LSHM_E_BUSY when that queue is full. Of `options`, the
 * spawning fields (startup_timeout_ms, restart_*) are checked but unused.
 *   out_client: receives the new handle (NULL on failure). lshm_client_free DETACHES from the
 *               worker, which goes on serving its other clients; lshm_client_shutdown ASKS THE
 *               SHARED WORKER TO EXIT (for everyone) and waits until it is seen to exit.
 * Errors: LSHM_E_INVALID_ARGUMENT (NULL prefix or out_client, a prefix that is empty, over 200
 * bytes or holds a character outside [A-Za-z0-9_.-], bad options as for lshm_client_new_with),
 * LSHM_E_INVALID_UTF8, LSHM_E_ATTACH (no usable worker under that prefix). */
lshm_status lshm_client_attach(const char *prefix, const lshm_options *options,
                               lshm_client **out_client, char **out_error);

/* The worker's process id (updated after each request: a restart may replace the worker).
 * Errors: LSHM_E_INVALID_ARGUMENT, LSHM_E_CLOSED. */
lshm_status lshm_client_worker_pid(const lshm_client *client, uint32_t *out_pid);

/* The most bytes one answer may have (default 8 MiB). A worker that goes on past it (an
 * endless answer) is cancelled and the request fails with LSHM_E_ANSWER_TOO_LONG, so what a
 * client holds stays near the bound. From the next request on (waits for one in flight).
 * Errors: LSHM_E_INVALID_ARGUMENT (NULL client, max_bytes 0). */
lshm_status lshm_client_set_max_answer_bytes(lshm_client *client, uint64_t max_bytes);

/* Sends one request (UTF-8 user and system prompts) and waits for the whole answer.
 *   deadline_ms: generation budget; 0 = none. When it passes, the answer so far comes back
 *                with finish == LSHM_FINISH_DEADLINE (status LSHM_OK).
 *   max_tokens: most tokens to generate; 0 = the worker's own limit.
 *   out_response: receives the answer; free it with lshm_response_free.
 * A cancelled request returns LSHM_OK with finish == LSHM_FINISH_CANCELLED and the partial text.
 * Errors: LSHM_E_INVALID_ARGUMENT, LSHM_E_INVALID_UTF8, LSHM_E_TIMEOUT .. LSHM_E_OS. */
lshm_status lshm_request(lshm_client *client, const char *user, const char *system,
                         uint64_t deadline_ms, uint32_t max_tokens, lshm_response *out_response,
                         char **out_error);

/* lshm_request that also passes the answer to `on_chunk` piece by piece as it is generated
 * (the chunks concatenate to out_response->text). A NULL on_chunk is LSHM_E_INVALID_ARGUMENT. */
lshm_status lshm_stream(lshm_client *client, const char *user, const char *system,
                        uint64_t deadline_ms, uint32_t max_tokens, lshm_chunk_fn on_chunk,
                        void *user_data, lshm_response *out_response, char **out_error);

/* Frees response->text and zeroes *response. NULL is a no-op. */
void lshm_response_free(lshm_response *response);

/* The default request options: struct_size set, every other field 0 or NULL (ABI 5). */
lshm_request_options lshm_request_options_default(void);

/* lshm_request with `options` (NULL: none): a JSON schema or grammar the answer must match (the
 * two prompts then go to the worker as a system and a user message, through its request area),
 * a seed, the budget. `out_extras`: NULL, or a struct whose struct_size the caller set (ABI 5).
 * Errors: as lshm_request; LSHM_E_INVALID_ARGUMENT also for options or extras of another
 * struct_size, drop_oldest not 0 or 1, or both json_schema and grammar; LSHM_E_INVALID_CONSTRAINT
 * (the worker cannot compile the schema or grammar; nothing was generated); LSHM_E_UNSUPPORTED
 * (the worker or its engine cannot honour the options: a seed-era worker, the echo engine and a
 * constraint). */
lshm_status lshm_request_with(lshm_client *client, const char *user, const char *system,
                              const lshm_request_options *options, lshm_response *out_response,
                              lshm_response_extras *out_extras, char **out_error);

/* lshm_request_with that also passes the answer to `on_chunk` piece by piece, as lshm_stream.
 * A NULL on_chunk is LSHM_E_INVALID_ARGUMENT (ABI 5). */
lshm_status lshm_stream_with(lshm_client *client, const char *user, const char *system,
                             const lshm_request_options *options, lshm_chunk_fn on_chunk,
                             void *user_data, lshm_response *out_response,
                             lshm_response_extras *out_extras, char **out_error);

/* Answers the conversation messages[0 .. n_messages) (system, user and assistant messages,
 * rendered with the model's chat template; as many as the context and the worker's 1 MiB
 * request area hold), with `options` (NULL: none) (ABI 5).
 *   out_response: the answer, as for lshm_request; free it with lshm_response_free.
 *   out_extras:   NULL, or (struct_size set by the caller) how many messages drop_oldest cut.
 * A cancelled request returns LSHM_OK with finish == LSHM_FINISH_CANCELLED and the partial text.
 * Errors: as lshm_request_with; LSHM_E_INVALID_ARGUMENT also for NULL messages with n_messages > 0,
 * a role not LSHM_ROLE_*, a non-zero reserved, NULL content with content_len > 0;
 * LSHM_E_INVALID_UTF8 (a content); LSHM_E_PROMPT_TOO_LONG (the conversation does not fit the
 * context and drop_oldest is 0); LSHM_E_REQUEST_TOO_LARGE (it does not fit the request area;
 * nothing was sent); LSHM_E_UNSUPPORTED (a worker without a request area). */
lshm_status lshm_chat(lshm_client *client, const lshm_message *messages, size_t n_messages,
                      const lshm_request_options *options, lshm_response *out_response,
                      lshm_response_extras *out_extras, char **out_error);

/* lshm_chat that also passes the answer to `on_chunk` piece by piece as it is generated, as
 * lshm_stream. A NULL on_chunk is LSHM_E_INVALID_ARGUMENT (ABI 5). */
lshm_status lshm_chat_stream(lshm_client *client, const lshm_message *messages, size_t n_messages,
                             const lshm_request_options *options, lshm_chunk_fn on_chunk,
                             void *user_data, lshm_response *out_response,
                             lshm_response_extras *out_extras, char **out_error);

/* One vector per text of texts[0 .. n_texts) (NUL-terminated UTF-8; texts may be NULL when
 * n_texts is 0), from the worker's embedding model, pooled and L2-normalised (ABI 5). On success
 * *out_embeddings holds count == n_texts vectors of dim numbers in one malloc'ed array; free it
 * with lshm_embeddings_free. No texts give no vectors and send nothing.
 * Errors: LSHM_E_INVALID_ARGUMENT, LSHM_E_INVALID_UTF8, LSHM_E_UNSUPPORTED (an engine without
 * embeddings), LSHM_E_REQUEST_TOO_LARGE (one text larger than the request area), LSHM_E_CORRUPT,
 * LSHM_E_NO_MEMORY, and the request failures of lshm_request. */
lshm_status lshm_embed(lshm_client *client, const char *const *texts, size_t n_texts,
                       lshm_embeddings *out_embeddings, char **out_error);

/* Frees embeddings->values and zeroes *embeddings. NULL is a no-op (ABI 5). */
void lshm_embeddings_free(lshm_embeddings *embeddings);

/* How many tokens `text` is for the worker's model (no chat template, no special tokens), in
 * *out_tokens (0 after a failure) (ABI 5). Errors: LSHM_E_INVALID_ARGUMENT, LSHM_E_INVALID_UTF8,
 * LSHM_E_UNSUPPORTED, LSHM_E_REQUEST_TOO_LARGE, and the request failures of lshm_request. */
lshm_status lshm_count_tokens(lshm_client *client, const char *text, uint32_t *out_tokens,
                              char **out_error);

/* How many prompt tokens the conversation takes through the model's chat template (what lshm_chat
 * would evaluate), in *out_tokens (0 after a failure), to budget before sending (ABI 5).
 * Errors: as lshm_count_tokens, and the message errors of lshm_chat. */
lshm_status lshm_count_conversation_tokens(lshm_client *client, const lshm_message *messages,
                                           size_t n_messages, uint32_t *out_tokens, char **out_error);

/* A cancel handle for `client`, usable from any thread; it may outlive the client (it then
 * cancels nothing). Release it with lshm_canceller_free. Errors: LSHM_E_INVALID_ARGUMENT. */
lshm_status lshm_canceller_new(const lshm_client *client, lshm_canceller **out_canceller);

/* Cancels the client's request in flight: generation stops within a token and that request
 * returns LSHM_OK with finish == LSHM_FINISH_CANCELLED. *out_in_flight (may be NULL) is set to
 * 1 if a request was in flight, else 0. Errors: LSHM_E_INVALID_ARGUMENT. */
lshm_status lshm_cancel(const lshm_canceller *canceller, int32_t *out_in_flight);

/* Releases a cancel handle. NULL is a no-op. */
void lshm_canceller_free(lshm_canceller *canceller);

/* Shuts the worker down in order (5 s bound, then it is killed) and frees `client`, which is
 * invalid afterwards whatever the result. No other thread may be using it. For a client of
 * lshm_client_attach: asks the shared worker to exit (for all its clients) and waits, bounded,
 * until it is seen to exit; use lshm_client_free to leave it running.
 * Errors: LSHM_E_INVALID_ARGUMENT, LSHM_E_SHUTDOWN (worker killed or exited with a failure;
 * attached: no turn to ask it, it refused, or its exit was not seen in time). */
lshm_status lshm_client_shutdown(lshm_client *client, char **out_error);

/* Frees `client` without reporting: a spawned worker is still shut down; from a shared worker
 * (lshm_client_attach) it only detaches, and the worker goes on running. NULL is a no-op. */
void lshm_client_free(lshm_client *client);

/* Frees a string returned by this library. NULL is a no-op. */
void lshm_string_free(char *s);

#ifdef __cplusplus
}
#endif

#endif /* LLAMA_SHM_H */
