/*
 * conversation.c — the ABI 5 calls end to end, against the echo engine (which answers a
 * conversation with every message's content, one per line; refuses a schema or grammar with
 * LSHM_E_UNSUPPORTED; embeds a text as 16 numbers; counts whitespace-separated words):
 * lshm_chat and lshm_chat_stream (a conversation of 3 messages, one over 4 KiB, the extras),
 * lshm_request_with and lshm_stream_with, a constraint refused as LSHM_E_UNSUPPORTED and
 * nothing else, a request over the 1 MiB request area refused as LSHM_E_REQUEST_TOO_LARGE, the
 * budget and deadline through lshm_request_options, lshm_embed, lshm_count_tokens and
 * lshm_count_conversation_tokens, and bad arguments on a live client.
 *
 * Usage: conversation WORKER_PATH. Exits 0 only if every check passed; each failure prints a
 * line. Built and run by tests/tests/ffi_frontends.rs, as smoke.c.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static lshm_message msg(uint32_t role, const char *text) {
    lshm_message m = {role, 0, text, strlen(text)};
    return m;
}

static lshm_response_extras extras(void) {
    /* Not 0: the library must overwrite what the caller left there. */
    lshm_response_extras x = {sizeof(lshm_response_extras), 12345};
    return x;
}

/* What the streaming callback collects. */
struct collected {
    char *text;
    size_t len;
    size_t chunks;
};

static void on_chunk(const char *chunk, size_t len, void *user_data) {
    struct collected *c = user_data;
    char *grown = realloc(c->text, c->len + len + 1);
    if (grown == NULL) {
        abort();
    }
    c->text = grown;
    memcpy(c->text + c->len, chunk, len);
    c->len += len;
    c->text[c->len] = '\0';
    c->chunks++;
}

static char *repeat_words(size_t n) {
    /* "w0000 w0001 ..." : n words of 6 bytes each (5 + a space). */
    char *s = malloc(n * 6 + 1);
    if (s == NULL) {
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(s + i * 6, 7, "w%04zu ", i % 10000);
    }
    s[n * 6] = '\0';
    return s;
}

static const char *or_null(const char *s) {
    return s ? s : "(null)";
}

/* A call that must fail with `want` and leave the response and the extras zeroed. */
static void expect_refused(lshm_status got, lshm_status want, const lshm_response *r, const lshm_response_extras *x,
                           char *err, const char *what) {
    CHECK(got == want, "%s: status %d (%s), wanted %d: %s", what, (int)got, lshm_status_message(got), (int)want,
          or_null(err));
    CHECK(err != NULL && strlen(err) > 0, "%s: no message", what);
    CHECK(r->text == NULL && r->text_len == 0 && r->finish == LSHM_FINISH_UNKNOWN, "%s: response not cleared", what);
    if (x != NULL) {
        CHECK(x->dropped_messages == 0 && x->struct_size == sizeof(lshm_response_extras), "%s: extras not cleared",
              what);
    }
    lshm_string_free(err);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s WORKER_PATH\n", argv[0]);
        return 2;
    }
    CHECK(lshm_abi_version() == LSHM_ABI_VERSION && LSHM_ABI_VERSION == 5, "abi version %u", lshm_abi_version());
    CHECK(strcmp(lshm_status_message(LSHM_E_UNSUPPORTED), "unknown status code") != 0, "message of UNSUPPORTED");
    lshm_request_options d = lshm_request_options_default();
    CHECK(d.struct_size == sizeof(lshm_request_options) && d.max_tokens == 0 && d.deadline_ms == 0 && d.seed == 0 &&
              d.drop_oldest == 0 && d.json_schema == NULL && d.grammar == NULL,
          "default request options");

    const char *args[] = {"--engine", "echo", "--echo-piece-us", "200"};
    lshm_client *c = NULL;
    char *err = NULL;
    lshm_status s = lshm_client_new(argv[1], args, 4, 30000, &c, &err);
    if (s != LSHM_OK) {
        fprintf(stderr, "FAIL: lshm_client_new: %s (%s)\n", lshm_status_message(s), or_null(err));
        lshm_string_free(err);
        return 1;
    }
    lshm_response r;
    lshm_response_extras x;

    /* 1. A conversation of three messages: the contents, one per line; nothing dropped. */
    lshm_message three[] = {msg(LSHM_ROLE_SYSTEM, "Be terse."), msg(LSHM_ROLE_USER, "What is 2+2?"),
                            msg(LSHM_ROLE_ASSISTANT, "4, and h\xc3\xa9llo \xf0\x9f\x98\x80")};
    const char *joined = "Be terse.\nWhat is 2+2?\n4, and h\xc3\xa9llo \xf0\x9f\x98\x80";
    x = extras();
    s = lshm_chat(c, three, 3, NULL, &r, &x, &err);
    CHECK(s == LSHM_OK, "chat: %s (%s)", lshm_status_message(s), or_null(err));
    lshm_string_free(err);
    err = NULL;
    CHECK(r.text != NULL && strcmp(r.text, joined) == 0 && r.text_len == strlen(joined), "chat: answer \"%s\"",
          or_null(r.text));
    CHECK(r.finish == LSHM_FINISH_STOP && r.seq > 0, "chat: finish %u seq %llu", r.finish, (unsigned long long)r.seq);
    CHECK(x.dropped_messages == 0 && x.struct_size == sizeof x, "chat: dropped %u", x.dropped_messages);
    lshm_response_free(&r);
    /* NULL extras are fine; drop_oldest and a seed change nothing for the echo engine. */
    lshm_request_options o = lshm_request_options_default();
    o.drop_oldest = 1;
    o.seed = 7;
    s = lshm_chat(c, three, 3, &o, &r, NULL, NULL);
    CHECK(s == LSHM_OK && r.text != NULL && strcmp(r.text, joined) == 0, "chat (drop_oldest, seed): %d \"%s\"", (int)s,
          or_null(r.text));
    lshm_response_free(&r);

    /* 2. A conversation over 4 KiB (the seed's prompt field): 2000 words in one message. */
    {
        char *big = repeat_words(2000);
        lshm_message longer[] = {msg(LSHM_ROLE_SYSTEM, "sys"), msg(LSHM_ROLE_USER, big),
                                 msg(LSHM_ROLE_ASSISTANT, "tail")};
        size_t want_len = 3 + 1 + strlen(big) + 1 + 4;
        x = extras();
        struct collected seen = {NULL, 0, 0};
        s = lshm_chat_stream(c, longer, 3, NULL, on_chunk, &seen, &r, &x, &err);
        CHECK(s == LSHM_OK, "long chat_stream: %s (%s)", lshm_status_message(s), or_null(err));
        lshm_string_free(err);
        err = NULL;
        CHECK(r.text != NULL && r.text_len == want_len && strncmp(r.text, "sys\nw0000 w0001", 15) == 0 &&
                  strcmp(r.text + want_len - 6, " \ntail") == 0,
              "long chat_stream: %zu bytes, wanted %zu", r.text_len, want_len);
        CHECK(seen.text != NULL && r.text != NULL && strcmp(seen.text, r.text) == 0, "long chat_stream: chunks differ");
        CHECK(seen.chunks >= 100, "long chat_stream: only %zu chunks", seen.chunks);
        CHECK(x.dropped_messages == 0, "long chat_stream: dropped %u", x.dropped_messages);
        lshm_response_free(&r);
        free(seen.text);

        /* Counting it: the words of all contents. */
        uint32_t n = 99;
        s = lshm_count_conversation_tokens(c, longer, 3, &n, &err);
        CHECK(s == LSHM_OK && n == 2002, "count_conversation_tokens: %d, %u (%s)", (int)s, n, or_null(err));
        lshm_string_free(err);
        err = NULL;

        /* The budget and the deadline end a conversation's answer early. */
        o = lshm_request_options_default();
        o.max_tokens = 3;
        s = lshm_chat(c, longer, 3, &o, &r, NULL, NULL);
        CHECK(s == LSHM_OK && r.finish == LSHM_FINISH_LENGTH && r.generated_tokens == 3 && r.text_len <= 12,
              "chat max_tokens: %d finish %u, %u tokens", (int)s, r.finish, r.generated_tokens);
        lshm_response_free(&r);
        o = lshm_request_options_default();
        o.deadline_ms = 20;
        s = lshm_chat(c, longer, 3, &o, &r, NULL, NULL);
        CHECK(s == LSHM_OK && r.finish == LSHM_FINISH_DEADLINE && r.text_len < want_len,
              "chat deadline: %d finish %u, %zu bytes", (int)s, r.finish, r.text_len);
        lshm_response_free(&r);
        free(big);
    }

    /* 3. A schema or a grammar: the echo engine refuses it as LSHM_E_UNSUPPORTED, nothing else. */
    {
        o = lshm_request_options_default();
        o.json_schema = "{\"type\":\"object\"}";
        x = extras();
        r.text_len = 5;
        s = lshm_chat(c, three, 3, &o, &r, &x, &err);
        expect_refused(s, LSHM_E_UNSUPPORTED, &r, &x, err, "chat with a schema");
        err = NULL;
        o = lshm_request_options_default();
        o.grammar = "root ::= \"yes\"";
        x = extras();
        s = lshm_request_with(c, "u", "s", &o, &r, &x, &err);
        expect_refused(s, LSHM_E_UNSUPPORTED, &r, &x, err, "request_with a grammar");
        err = NULL;
        struct collected seen = {NULL, 0, 0};
        s = lshm_stream_with(c, "u", "s", &o, on_chunk, &seen, &r, NULL, &err);
        expect_refused(s, LSHM_E_UNSUPPORTED, &r, NULL, err, "stream_with a grammar");
        err = NULL;
        CHECK(seen.chunks == 0 && seen.text == NULL, "stream_with a grammar: %zu chunks", seen.chunks);
        s = lshm_chat_stream(c, three, 3, &o, on_chunk, &seen, &r, NULL, &err);
        expect_refused(s, LSHM_E_UNSUPPORTED, &r, NULL, err, "chat_stream with a grammar");
        err = NULL;
        CHECK(seen.chunks == 0 && seen.text == NULL, "chat_stream with a grammar: %zu chunks", seen.chunks);
        /* Both at once: refused before sending. */
        o.json_schema = "{}";
        s = lshm_chat(c, three, 3, &o, &r, NULL, &err);
        expect_refused(s, LSHM_E_INVALID_ARGUMENT, &r, NULL, err, "chat with a schema and a grammar");
        err = NULL;
    }

    /* 4. The two prompts through lshm_request_with / lshm_stream_with: as lshm_request. */
    {
        x = extras();
        s = lshm_request_with(c, "user", "system", NULL, &r, &x, &err);
        CHECK(s == LSHM_OK && r.text != NULL && strcmp(r.text, "system\nuser") == 0 && x.dropped_messages == 0,
              "request_with: %d \"%s\" (%s)", (int)s, or_null(r.text), or_null(err));
        lshm_string_free(err);
        err = NULL;
        lshm_response_free(&r);
        struct collected seen = {NULL, 0, 0};
        o = lshm_request_options_default();
        o.seed = 3;
        s = lshm_stream_with(c, "stream me", "sys", &o, on_chunk, &seen, &r, NULL, NULL);
        CHECK(s == LSHM_OK && r.text != NULL && strcmp(r.text, "sys\nstream me") == 0, "stream_with: \"%s\"",
              or_null(r.text));
        CHECK(seen.text != NULL && strcmp(seen.text, "sys\nstream me") == 0 && seen.chunks >= 3,
              "stream_with: %zu chunks \"%s\"", seen.chunks, or_null(seen.text));
        lshm_response_free(&r);
        free(seen.text);
        s = lshm_stream_with(c, "u", "s", NULL, NULL, NULL, &r, NULL, NULL);
        CHECK(s == LSHM_E_INVALID_ARGUMENT && r.text == NULL, "stream_with: NULL on_chunk gave %d", (int)s);
    }

    /* 5. Embeddings: identical texts identical vectors, another text another. */
    {
        const char *texts[] = {"a b", "a b", "zz"};
        lshm_embeddings e;
        s = lshm_embed(c, texts, 3, &e, &err);
        CHECK(s == LSHM_OK, "embed: %s (%s)", lshm_status_message(s), or_null(err));
        lshm_string_free(err);
        err = NULL;
        CHECK(e.count == 3 && e.dim == 16 && e.values != NULL, "embed: %zu vectors of %zu", e.count, e.dim);
        if (e.count == 3 && e.dim == 16 && e.values != NULL) {
            CHECK(memcmp(e.values, e.values + 16, 16 * sizeof(float)) == 0, "embed: the two \"a b\" differ");
            CHECK(memcmp(e.values, e.values + 32, 16 * sizeof(float)) != 0, "embed: \"zz\" is \"a b\"");
            double norm = 0;
            for (int i = 0; i < 16; i++) {
                norm += (double)e.values[32 + i] * e.values[32 + i];
            }
            CHECK(norm > 0.99999 && norm < 1.00001, "embed: |v|^2 = %f", norm);
        }
        lshm_embeddings_free(&e);
        CHECK(e.values == NULL && e.count == 0 && e.dim == 0, "embeddings_free did not clear");
        s = lshm_embed(c, NULL, 0, &e, NULL);
        CHECK(s == LSHM_OK && e.count == 0 && e.values == NULL, "embed of no texts: %d, %zu", (int)s, e.count);
        const char *with_null[] = {"x", NULL};
        s = lshm_embed(c, with_null, 2, &e, &err);
        CHECK(s == LSHM_E_INVALID_ARGUMENT && err != NULL && strstr(err, "texts[1]") != NULL && e.values == NULL,
              "embed with a NULL text: %d %s", (int)s, or_null(err));
        lshm_string_free(err);
        err = NULL;
    }

    /* 6. Token counts. */
    {
        uint32_t n = 99;
        s = lshm_count_tokens(c, "one two three", &n, &err);
        CHECK(s == LSHM_OK && n == 3, "count_tokens: %d, %u (%s)", (int)s, n, or_null(err));
        lshm_string_free(err);
        err = NULL;
        s = lshm_count_conversation_tokens(c, three, 3, &n, NULL);
        CHECK(s == LSHM_OK && n == 2 + 3 + 4, "count_conversation_tokens: %d, %u", (int)s, n);
        s = lshm_count_tokens(c, "\xff", &n, NULL);
        CHECK(s == LSHM_E_INVALID_UTF8 && n == 0, "count_tokens of non-UTF-8: %d", (int)s);
    }

    /* 7. Over the 1 MiB request area: refused before anything is sent. */
    {
        size_t len = ((size_t)1 << 20) + 1;
        char *huge = malloc(len + 1);
        if (huge == NULL) {
            abort();
        }
        memset(huge, 'x', len);
        huge[len] = '\0';
        lshm_message one[] = {{LSHM_ROLE_USER, 0, huge, len}};
        x = extras();
        s = lshm_chat(c, one, 1, NULL, &r, &x, &err);
        expect_refused(s, LSHM_E_REQUEST_TOO_LARGE, &r, &x, err, "chat over the area");
        err = NULL;
        const char *texts[] = {huge};
        lshm_embeddings e;
        s = lshm_embed(c, texts, 1, &e, NULL);
        CHECK(s == LSHM_E_REQUEST_TOO_LARGE && e.values == NULL && e.count == 0, "embed over the area: %d", (int)s);
        uint32_t n = 99;
        s = lshm_count_tokens(c, huge, &n, NULL);
        CHECK(s == LSHM_E_REQUEST_TOO_LARGE && n == 0, "count_tokens over the area: %d", (int)s);
        free(huge);
    }

    /* 8. Bad messages and options on a live client: refused, and the client goes on. */
    {
        lshm_message bad[] = {msg(LSHM_ROLE_USER, "ok"), msg(9, "bad role")};
        s = lshm_chat(c, bad, 2, NULL, &r, NULL, &err);
        CHECK(s == LSHM_E_INVALID_ARGUMENT && err != NULL && strstr(err, "messages[1].role") != NULL,
              "bad role: %d %s", (int)s, or_null(err));
        lshm_string_free(err);
        err = NULL;
        bad[1] = msg(LSHM_ROLE_USER, "\xc3(");
        s = lshm_chat(c, bad, 2, NULL, &r, NULL, NULL);
        CHECK(s == LSHM_E_INVALID_UTF8, "content not UTF-8: %d", (int)s);
        s = lshm_chat(c, NULL, 2, NULL, &r, NULL, NULL);
        CHECK(s == LSHM_E_INVALID_ARGUMENT, "NULL messages: %d", (int)s);
        o = lshm_request_options_default();
        o.struct_size = 8;
        s = lshm_chat(c, three, 3, &o, &r, NULL, &err);
        CHECK(s == LSHM_E_INVALID_ARGUMENT && err != NULL && strstr(err, "struct_size") != NULL,
              "options of another size: %d %s", (int)s, or_null(err));
        lshm_string_free(err);
        err = NULL;
        x.struct_size = 4;
        s = lshm_chat(c, three, 3, NULL, &r, &x, NULL);
        CHECK(s == LSHM_E_INVALID_ARGUMENT, "extras of another size: %d", (int)s);
        /* A message of pointer and length: no terminating NUL is read. */
        lshm_message cut[] = {{LSHM_ROLE_USER, 0, "keep|drop", 4}};
        s = lshm_chat(c, cut, 1, NULL, &r, NULL, NULL);
        CHECK(s == LSHM_OK && r.text != NULL && strcmp(r.text, "keep") == 0, "content_len: \"%s\"", or_null(r.text));
        lshm_response_free(&r);
        s = lshm_request(c, "again", "s", 0, 0, &r, NULL);
        CHECK(s == LSHM_OK && r.text != NULL && strcmp(r.text, "s\nagain") == 0, "still usable: \"%s\"",
              or_null(r.text));
        lshm_response_free(&r);
    }

    s = lshm_client_shutdown(c, &err);
    CHECK(s == LSHM_OK, "shutdown: %s (%s)", lshm_status_message(s), or_null(err));
    lshm_string_free(err);

    if (failures > 0) {
        fprintf(stderr, "conversation: %d check(s) failed\n", failures);
        return 1;
    }
    printf("conversation: all checks passed\n");
    return 0;
}
