/*
 * smoke.c — the C ABI end to end, against the echo engine (which answers system + "\n" + user):
 * exact answers, streaming in several chunks, a cancel from a second thread after the first
 * chunk, token budget and deadline, NULL and non-UTF-8 arguments, shutdown.
 *
 * Usage: smoke WORKER_PATH. Exits 0 only if every check passed; each failure prints a line.
 * Built and run by tests/tests/ffi_frontends.rs:
 *   cc -Wall -Wextra -Werror -std=c11 smoke.c -I include -L DIR -lllama_shm_ffi -lpthread -Wl,-rpath,DIR
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "llama_shm.h"

static int failures = 0;

#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (!(cond)) {                                            \
            failures++;                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
            fprintf(stderr, __VA_ARGS__);                         \
            fputc('\n', stderr);                                  \
        }                                                         \
    } while (0)

/* What the streaming callback collects. */
struct collected {
    char *text;
    size_t len;
    size_t chunks;
    int nul_terminated; /* every chunk had chunk[len] == '\0' */
    pthread_mutex_t lock;
    pthread_cond_t first_chunk;
};

static void collect_init(struct collected *c) {
    memset(c, 0, sizeof *c);
    c->nul_terminated = 1;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->first_chunk, NULL);
}

static void collect_free(struct collected *c) {
    free(c->text);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->first_chunk);
}

static void on_chunk(const char *chunk, size_t len, void *user_data) {
    struct collected *c = user_data;
    pthread_mutex_lock(&c->lock);
    char *grown = realloc(c->text, c->len + len + 1);
    if (grown == NULL) {
        abort();
    }
    c->text = grown;
    memcpy(c->text + c->len, chunk, len);
    c->len += len;
    c->text[c->len] = '\0';
    if (chunk[len] != '\0') {
        c->nul_terminated = 0;
    }
    c->chunks++;
    pthread_cond_broadcast(&c->first_chunk);
    pthread_mutex_unlock(&c->lock);
}

struct cancel_job {
    struct collected *seen;
    lshm_canceller *canceller;
    lshm_status status;
    int32_t in_flight;
};

/* Waits for the first chunk, then cancels from this (second) thread. */
static void *cancel_after_first_chunk(void *arg) {
    struct cancel_job *job = arg;
    pthread_mutex_lock(&job->seen->lock);
    while (job->seen->chunks == 0) {
        pthread_cond_wait(&job->seen->first_chunk, &job->seen->lock);
    }
    pthread_mutex_unlock(&job->seen->lock);
    job->status = lshm_cancel(job->canceller, &job->in_flight);
    return NULL;
}

static char *repeat(char ch, size_t n) {
    char *s = malloc(n + 1);
    if (s == NULL) {
        abort();
    }
    memset(s, ch, n);
    s[n] = '\0';
    return s;
}

static int starts_with(const char *s, size_t len, const char *prefix_of) {
    return strncmp(s, prefix_of, len) == 0;
}

static void check_null_arguments(void) {
    char *err = NULL;
    lshm_client *client = (lshm_client *)1; /* must be overwritten with NULL */
    lshm_response r;
    const char *argv[] = {"--engine", "echo"};

    CHECK(lshm_client_new(NULL, argv, 2, 0, NULL, &err) == LSHM_E_INVALID_ARGUMENT, "new: NULL out_client");
    CHECK(err != NULL && strstr(err, "out_client") != NULL, "new: message names out_client: %s", err ? err : "(null)");
    lshm_string_free(err);
    err = NULL;
    CHECK(lshm_client_new(NULL, NULL, 2, 0, &client, NULL) == LSHM_E_INVALID_ARGUMENT, "new: NULL argv, argc 2");
    CHECK(client == NULL, "new: out_client not cleared on failure");
    CHECK(lshm_request(NULL, "u", "s", 0, 0, &r, &err) == LSHM_E_INVALID_ARGUMENT, "request: NULL client");
    CHECK(r.text == NULL, "request: text not NULL after a failure");
    CHECK(err != NULL, "request: no error message");
    lshm_string_free(err);
    err = NULL;
    CHECK(lshm_request(NULL, "u", "s", 0, 0, NULL, NULL) == LSHM_E_INVALID_ARGUMENT, "request: NULL response");
    CHECK(lshm_stream(NULL, "u", "s", 0, 0, on_chunk, NULL, &r, NULL) == LSHM_E_INVALID_ARGUMENT, "stream: NULL client");
    CHECK(lshm_canceller_new(NULL, NULL) == LSHM_E_INVALID_ARGUMENT, "canceller_new: NULLs");
    CHECK(lshm_cancel(NULL, NULL) == LSHM_E_INVALID_ARGUMENT, "cancel: NULL");
    CHECK(lshm_client_worker_pid(NULL, NULL) == LSHM_E_INVALID_ARGUMENT, "worker_pid: NULL");
    CHECK(lshm_client_shutdown(NULL, &err) == LSHM_E_INVALID_ARGUMENT, "shutdown: NULL");
    lshm_string_free(err);
    lshm_client_free(NULL);
    lshm_canceller_free(NULL);
    lshm_response_free(NULL);
    lshm_string_free(NULL);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s WORKER_PATH\n", argv[0]);
        return 2;
    }
    const char *worker = argv[1];

    CHECK(lshm_version() != NULL && strlen(lshm_version()) > 0, "version");
    CHECK(strcmp(lshm_status_message(LSHM_OK), "ok") == 0, "status message of LSHM_OK");
    CHECK(strcmp(lshm_status_message(12345), "unknown status code") == 0, "status message of 12345");
    check_null_arguments();

    /* A missing worker binary is a typed error with a message naming it. */
    {
        lshm_client *none = NULL;
        char *err = NULL;
        lshm_status s = lshm_client_new("/nonexistent/llama-shm-worker", NULL, 0, 0, &none, &err);
        CHECK(s == LSHM_E_WORKER_NOT_FOUND, "missing worker: status %d", (int)s);
        CHECK(none == NULL, "missing worker: a handle was returned");
        CHECK(err != NULL && strstr(err, "/nonexistent/llama-shm-worker") != NULL, "missing worker: message %s",
              err ? err : "(null)");
        lshm_string_free(err);
    }

    /* The ABI version and the options struct: another ABI or a malformed struct is refused. */
    {
        CHECK(lshm_abi_version() == LSHM_ABI_VERSION, "abi version %u", lshm_abi_version());
        lshm_options o = lshm_options_default();
        CHECK(o.struct_size == sizeof(lshm_options), "default options: struct_size %u", o.struct_size);
        CHECK(o.prompt_policy == LSHM_POLICY_TRUNCATE && o.request_timeout_ms == 0 && o.restart_max_attempts == 0,
              "default options are the defaults");
        const char *echo[] = {"--engine", "echo"};
        lshm_client *c = NULL;
        char *e = NULL;
        o.struct_size = (uint32_t)sizeof(lshm_options) - 8;
        CHECK(lshm_client_new_with(worker, echo, 2, &o, &c, &e) == LSHM_E_INVALID_ARGUMENT && c == NULL,
              "new_with: another struct_size is refused");
        CHECK(e != NULL && strstr(e, "struct_size") != NULL, "new_with: message names struct_size: %s", e ? e : "");
        lshm_string_free(e);
        e = NULL;
        o = lshm_options_default();
        o.prompt_policy = 7;
        CHECK(lshm_client_new_with(worker, echo, 2, &o, &c, NULL) == LSHM_E_INVALID_ARGUMENT, "new_with: bad policy");
        /* Strict prompts: an over-long prompt is refused before anything is sent. */
        o = lshm_options_default();
        o.prompt_policy = LSHM_POLICY_STRICT;
        o.startup_timeout_ms = 10000;
        lshm_status st = lshm_client_new_with(worker, echo, 2, &o, &c, &e);
        CHECK(st == LSHM_OK && c != NULL, "new_with: %s (%s)", lshm_status_message(st), e ? e : "");
        lshm_string_free(e);
        e = NULL;
        if (c != NULL) {
            char *big = repeat('x', 5000);
            lshm_response rr;
            CHECK(lshm_request(c, big, "s", 0, 0, &rr, NULL) == LSHM_E_ENCODE, "strict: a 5000-byte prompt");
            CHECK(lshm_request(c, "fits", "s", 0, 0, &rr, NULL) == LSHM_OK && strcmp(rr.text, "s\nfits") == 0,
                  "strict: a prompt that fits");
            lshm_response_free(&rr);
            free(big);
            CHECK(lshm_client_shutdown(c, NULL) == LSHM_OK, "new_with: shutdown");
        }
        /* NULL options are the defaults. */
        c = NULL;
        CHECK(lshm_client_new_with(worker, echo, 2, NULL, &c, NULL) == LSHM_OK && c != NULL, "new_with: NULL options");
        if (c != NULL) {
            CHECK(lshm_client_shutdown(c, NULL) == LSHM_OK, "new_with NULL: shutdown");
        }
    }

    const char *args[] = {"--engine", "echo", "--echo-piece-us", "2000"};
    lshm_client *client = NULL;
    char *err = NULL;
    lshm_status s = lshm_client_new(worker, args, 4, 30000, &client, &err);
    if (s != LSHM_OK) {
        fprintf(stderr, "FAIL: lshm_client_new: %s (%s)\n", lshm_status_message(s), err ? err : "");
        lshm_string_free(err);
        return 1;
    }
    uint32_t pid = 0;
    CHECK(lshm_client_worker_pid(client, &pid) == LSHM_OK && pid > 0, "worker pid");

    /* 1. One request, exact answer (non-ASCII included). */
    const char *expected = "Be terse.\nHello, w\xc3\xb6rld \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80";
    lshm_response r;
    s = lshm_request(client, "Hello, w\xc3\xb6rld \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80", "Be terse.", 0, 0, &r,
                     &err);
    CHECK(s == LSHM_OK, "request: %s (%s)", lshm_status_message(s), err ? err : "");
    lshm_string_free(err);
    err = NULL;
    CHECK(r.text != NULL && strcmp(r.text, expected) == 0, "request: answer \"%s\"", r.text ? r.text : "(null)");
    CHECK(r.text_len == strlen(expected), "request: text_len %zu", r.text_len);
    CHECK(r.finish == LSHM_FINISH_STOP, "request: finish %u", r.finish);
    CHECK(r.seq > 0, "request: seq 0");
    lshm_response_free(&r);
    CHECK(r.text == NULL, "response_free did not clear text");

    /* 2. Bad arguments on a live client. */
    s = lshm_request(client, NULL, "s", 0, 0, &r, NULL);
    CHECK(s == LSHM_E_INVALID_ARGUMENT, "request: NULL user gave %d", (int)s);
    s = lshm_request(client, "\xff\xfe", "s", 0, 0, &r, &err);
    CHECK(s == LSHM_E_INVALID_UTF8, "request: invalid UTF-8 gave %d", (int)s);
    CHECK(err != NULL && strstr(err, "user") != NULL, "invalid UTF-8: message %s", err ? err : "(null)");
    lshm_string_free(err);
    err = NULL;
    s = lshm_stream(client, "u", "s", 0, 0, NULL, NULL, &r, NULL);
    CHECK(s == LSHM_E_INVALID_ARGUMENT, "stream: NULL callback gave %d", (int)s);

    /* 3. Streaming: several chunks that concatenate to the answer. */
    {
        struct collected seen;
        collect_init(&seen);
        s = lshm_stream(client, "stream me, please", "sys", 0, 0, on_chunk, &seen, &r, &err);
        CHECK(s == LSHM_OK, "stream: %s (%s)", lshm_status_message(s), err ? err : "");
        lshm_string_free(err);
        err = NULL;
        CHECK(r.text != NULL && strcmp(r.text, "sys\nstream me, please") == 0, "stream: answer \"%s\"",
              r.text ? r.text : "(null)");
        CHECK(seen.text != NULL && strcmp(seen.text, "sys\nstream me, please") == 0, "stream: chunks gave \"%s\"",
              seen.text ? seen.text : "(null)");
        CHECK(seen.chunks >= 3, "stream: only %zu chunk(s)", seen.chunks);
        CHECK(seen.nul_terminated, "stream: a chunk was not NUL-terminated");
        CHECK(r.finish == LSHM_FINISH_STOP, "stream: finish %u", r.finish);
        lshm_response_free(&r);
        collect_free(&seen);
    }

    /* 4. Cancel from a second thread after the first chunk. The full answer would take
     *    2001 bytes / 4 per piece * 2 ms ≈ 1 s. */
    {
        char *user = repeat('a', 2000);
        char *full = malloc(2002);
        if (full == NULL) {
            abort();
        }
        snprintf(full, 2002, "\n%s", user);
        struct collected seen;
        collect_init(&seen);
        struct cancel_job job = {&seen, NULL, -1, -1};
        CHECK(lshm_canceller_new(client, &job.canceller) == LSHM_OK && job.canceller != NULL, "canceller_new");
        int32_t idle = -1;
        CHECK(lshm_cancel(job.canceller, &idle) == LSHM_OK && idle == 0, "cancel with nothing in flight: %d", idle);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, cancel_after_first_chunk, &job) == 0, "pthread_create");
        s = lshm_stream(client, user, "", 0, 0, on_chunk, &seen, &r, &err);
        pthread_join(t, NULL);
        CHECK(s == LSHM_OK, "cancelled stream: %s (%s)", lshm_status_message(s), err ? err : "");
        lshm_string_free(err);
        err = NULL;
        CHECK(job.status == LSHM_OK && job.in_flight == 1, "cancel: status %d, in flight %d", (int)job.status,
              (int)job.in_flight);
        CHECK(r.finish == LSHM_FINISH_CANCELLED, "cancelled stream: finish %u", r.finish);
        CHECK(r.text != NULL && r.text_len < strlen(full) && starts_with(r.text, r.text_len, full),
              "cancelled stream: %zu bytes, not a strict prefix of the answer", r.text_len);
        CHECK(seen.len == r.text_len, "cancelled stream: chunks %zu bytes, text %zu", seen.len, r.text_len);
        lshm_response_free(&r);
        lshm_canceller_free(job.canceller);
        collect_free(&seen);

        /* 5. Token budget and deadline end the answer early, with their finish reasons. */
        s = lshm_request(client, user, "", 0, 3, &r, NULL);
        CHECK(s == LSHM_OK && r.finish == LSHM_FINISH_LENGTH, "max_tokens: status %d finish %u", (int)s, r.finish);
        CHECK(r.text != NULL && r.text_len > 0 && r.text_len <= 12 && starts_with(r.text, r.text_len, full),
              "max_tokens: %zu bytes", r.text_len);
        CHECK(r.generated_tokens == 3, "max_tokens: %u tokens", r.generated_tokens);
        lshm_response_free(&r);
        s = lshm_request(client, user, "", 50, 0, &r, NULL);
        CHECK(s == LSHM_OK && r.finish == LSHM_FINISH_DEADLINE, "deadline: status %d finish %u", (int)s, r.finish);
        CHECK(r.text != NULL && r.text_len < strlen(full) && starts_with(r.text, r.text_len, full),
              "deadline: %zu bytes", r.text_len);
        lshm_response_free(&r);
        free(user);
        free(full);
    }

    /* 6. Still usable after all that. */
    s = lshm_request(client, "again", "s", 0, 0, &r, NULL);
    CHECK(s == LSHM_OK && r.text != NULL && strcmp(r.text, "s\nagain") == 0, "request after cancel: \"%s\"",
          r.text ? r.text : "(null)");
    lshm_response_free(&r);

    /* 7. Shutdown: clean, and the worker is gone (reaped by the library). */
    s = lshm_client_shutdown(client, &err);
    CHECK(s == LSHM_OK, "shutdown: %s (%s)", lshm_status_message(s), err ? err : "");
    lshm_string_free(err);
    CHECK(pid == 0 || (kill((pid_t)pid, 0) == -1 && errno == ESRCH), "worker %u still exists after shutdown", pid);

    if (failures > 0) {
        fprintf(stderr, "smoke: %d check(s) failed\n", failures);
        return 1;
    }
    printf("smoke: all checks passed\n");
    return 0;
}
