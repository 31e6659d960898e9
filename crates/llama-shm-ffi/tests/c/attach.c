/*
 * attach.c — lshm_client_attach end to end, against a standalone echo worker that the runner
 * started (`llama-shm-worker --engine echo --prefix PREFIX --parallel 2`): two clients attached
 * at once get their own exact answers (one of them streamed), the worker's pid is the runner's,
 * a free only detaches (the worker goes on serving the other client and a new one), a prefix
 * nobody serves is LSHM_E_ATTACH with a message, and lshm_client_shutdown asks the shared worker
 * to exit (the runner then checks that it exited 0 and left no name behind).
 *
 * Usage: attach PREFIX WORKER_PID. Exits 0 only if every check passed; each failure prints a
 * line. Built and run by tests/tests/ffi_frontends.rs, as smoke.c.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

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

/* Appends each chunk to a fixed buffer (the answers here are short). */
struct collected {
    char text[256];
    size_t len;
    size_t chunks;
};

static void on_chunk(const char *chunk, size_t len, void *user_data) {
    struct collected *c = user_data;
    if (c->len + len < sizeof c->text) {
        memcpy(c->text + c->len, chunk, len);
        c->len += len;
        c->text[c->len] = '\0';
    }
    c->chunks++;
}

/* One request on `c`: checks that the answer is exactly system + "\n" + user. */
static void ask(lshm_client *c, const char *user, const char *system, const char *who) {
    char want[256];
    snprintf(want, sizeof want, "%s\n%s", system, user);
    lshm_response r;
    char *e = NULL;
    lshm_status st = lshm_request(c, user, system, 0, 0, &r, &e);
    CHECK(st == LSHM_OK, "%s: request: %d %s", who, st, e ? e : "");
    CHECK(r.text != NULL && strcmp(r.text, want) == 0, "%s: answer %s", who, r.text ? r.text : "(null)");
    lshm_string_free(e);
    lshm_response_free(&r);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: attach PREFIX WORKER_PID\n");
        return 2;
    }
    const char *prefix = argv[1];
    uint32_t worker_pid = (uint32_t)strtoul(argv[2], NULL, 10);
    /* lshm_client_attach came with ABI 4. */
    CHECK(lshm_abi_version() == LSHM_ABI_VERSION && LSHM_ABI_VERSION >= 4, "abi %u", lshm_abi_version());

    /* Two clients attached at once, each with its own answers; the pid is the standalone's. */
    lshm_client *a = NULL, *b = NULL;
    char *e = NULL;
    lshm_options o = lshm_options_default();
    o.request_timeout_ms = 20000;
    lshm_status st = lshm_client_attach(prefix, &o, &a, &e);
    CHECK(st == LSHM_OK && a != NULL, "attach a: %d %s", st, e ? e : "");
    lshm_string_free(e);
    st = lshm_client_attach(prefix, NULL, &b, &e);
    CHECK(st == LSHM_OK && b != NULL, "attach b: %d %s", st, e ? e : "");
    lshm_string_free(e);
    if (a == NULL || b == NULL) {
        fprintf(stderr, "attach: %d checks failed\n", failures);
        return 1;
    }
    uint32_t pid = 0;
    CHECK(lshm_client_worker_pid(a, &pid) == LSHM_OK && pid == worker_pid, "pid %u, want %u", pid, worker_pid);
    ask(a, "from a", "sys a", "a");
    ask(b, "from b", "sys b", "b");
    ask(a, "again a", "", "a");

    struct collected got;
    memset(&got, 0, sizeof got);
    lshm_response r;
    st = lshm_stream(b, "streamed to b", "s", 0, 0, on_chunk, &got, &r, NULL);
    CHECK(st == LSHM_OK && r.text != NULL && strcmp(r.text, "s\nstreamed to b") == 0, "stream: %d", st);
    CHECK(strcmp(got.text, "s\nstreamed to b") == 0 && got.chunks >= 1, "chunks %zu: %s", got.chunks, got.text);
    lshm_response_free(&r);

    /* A free only detaches: the worker still serves b, and a new client. */
    lshm_client_free(a);
    CHECK(kill((pid_t)worker_pid, 0) == 0, "the worker is gone after a free (errno %d)", errno);
    ask(b, "after a left", "s", "b");
    lshm_client *c = NULL;
    CHECK(lshm_client_attach(prefix, NULL, &c, NULL) == LSHM_OK && c != NULL, "attach c");
    if (c != NULL) {
        ask(c, "from c", "sys c", "c");
        lshm_client_free(c);
    }

    /* A prefix nobody serves. */
    char none[300];
    snprintf(none, sizeof none, "%s_nobody", prefix);
    lshm_client *n = (lshm_client *)&got; /* not NULL: the call must clear it */
    st = lshm_client_attach(none, NULL, &n, &e);
    CHECK(st == LSHM_E_ATTACH && n == NULL, "attach to %s: %d", none, st);
    CHECK(e != NULL && strstr(e, none) != NULL, "message: %s", e ? e : "(null)");
    lshm_string_free(e);
    CHECK(strstr(lshm_status_message(LSHM_E_ATTACH), "prefix") != NULL, "%s", lshm_status_message(LSHM_E_ATTACH));
    CHECK(lshm_client_attach(NULL, NULL, &n, NULL) == LSHM_E_INVALID_ARGUMENT && n == NULL, "NULL prefix");
    CHECK(lshm_client_attach("a/b", NULL, &n, NULL) == LSHM_E_INVALID_ARGUMENT && n == NULL, "bad prefix");

    /* Shutdown of an attached client asks the shared worker to exit. */
    st = lshm_client_shutdown(b, &e);
    CHECK(st == LSHM_OK, "shutdown: %d %s", st, e ? e : "");
    lshm_string_free(e);

    if (failures) {
        fprintf(stderr, "attach: %d checks failed\n", failures);
        return 1;
    }
    puts("attach: all checks passed");
    return 0;
}
