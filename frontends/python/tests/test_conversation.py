"""Conversations, request options, embeddings and token counts (ABI 5) against the echo
engine, which answers a conversation with every message's content, one per line; refuses
any schema or grammar (``UnsupportedError``); embeds a text as 16 numbers (an L2-normalised
byte histogram: identical texts alike, different texts not); counts whitespace-separated
words as tokens. Expected values are built from those rules, never taken from the client.
Every test checks that nothing of this process is left in /dev/shm.
"""

import asyncio
import math
import os

import pytest

import llama_shm
from llama_shm import Client
from llama_shm import _errors

ECHO = ["--engine", "echo"]
PACED = ["--engine", "echo", "--echo-piece-us", "200"]
THREE = [
    {"role": "system", "content": "Be terse."},
    ("user", "What is 2+2?"),
    {"role": "assistant", "content": "4, and héllo 😀"},
]
JOINED = "Be terse.\nWhat is 2+2?\n4, and héllo 😀"


def own_shm_entries():
    needle = "_%d_" % os.getpid()
    return sorted(n for n in os.listdir("/dev/shm") if needle in n)


@pytest.fixture(autouse=True)
def nothing_left_in_dev_shm():
    before = own_shm_entries()
    yield
    assert own_shm_entries() == before


def words(n):
    return "".join("w%04d " % (i % 10000) for i in range(n))


def test_a_conversation_is_answered_with_its_contents_one_per_line():
    with Client(args=ECHO) as c:
        r = c.chat(THREE)
        assert r.text == JOINED
        assert r.finish == "stop" and r.seq > 0
        assert r.dropped_messages == 0
        # drop_oldest and a seed change nothing for the echo engine.
        r = c.chat(THREE, drop_oldest=True, seed=7)
        assert (r.text, r.dropped_messages) == (JOINED, 0)
        assert c.chat([["user", "lists work too"]]).text == "lists work too"
        # A two-prompt answer says nothing was dropped either.
        assert c.ask("u", system="s").dropped_messages == 0


def test_a_conversation_over_4_kib_is_answered_whole_and_streamed():
    big = words(2000)  # 12000 bytes: three times the seed's prompt field
    messages = [("system", "sys"), ("user", big), ("assistant", "tail")]
    expected = "sys\n" + big + "\ntail"
    with Client(args=PACED) as c:
        assert c.chat(messages).text == expected
        stream = c.chat_stream(messages)
        chunks = list(stream)
        assert len(chunks) >= 100, "paced pieces arrive one by one"
        assert "".join(chunks) == expected
        assert stream.response is not None and stream.response.text == expected
        assert stream.response.dropped_messages == 0
        assert c.count_tokens(messages) == 2002


def test_the_budget_and_the_deadline_apply_to_a_conversation():
    messages = [("user", words(1000))]
    with Client(args=PACED) as c:
        r = c.chat(messages, max_tokens=3)
        assert (r.finish, r.usage.generated_tokens) == ("length", 3)
        assert words(1000).startswith(r.text) and len(r.text) <= 12
        r = c.chat(messages, deadline=0.02)
        assert r.finish == "deadline"
        assert words(1000).startswith(r.text) and len(r.text) < 6000


@pytest.mark.parametrize(
    "constraint",
    [
        {"json_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        {"json_schema": '{"type": "string"}'},
        {"grammar": 'root ::= "yes" | "no"'},
    ],
    ids=["schema-dict", "schema-text", "grammar"],
)
def test_a_constraint_on_the_echo_engine_is_unsupported_and_nothing_else(constraint):
    with Client(args=ECHO) as c:
        for call in (
            lambda: c.chat(THREE, **constraint),
            lambda: list(c.chat_stream(THREE, **constraint)),
            lambda: c.ask("u", system="s", **constraint),
            lambda: list(c.stream("u", **constraint)),
        ):
            with pytest.raises(llama_shm.UnsupportedError) as e:
                call()
            assert type(e.value) is llama_shm.UnsupportedError
            assert e.value.status == 25 and str(e.value)
            assert not isinstance(e.value, llama_shm.InvalidConstraintError)
        assert c.chat(THREE).text == JOINED, "the client goes on"


def test_a_request_larger_than_the_request_area_is_refused_before_sending():
    huge = "x" * ((1 << 20) + 1)  # the area holds 1 MiB, record headers included
    with Client(args=ECHO) as c:
        for call in (lambda: c.chat([("user", huge)]), lambda: c.embed([huge]), lambda: c.count_tokens(huge)):
            with pytest.raises(llama_shm.RequestTooLargeError) as e:
                call()
            assert e.value.status == 26 and "bytes" in str(e.value)
        assert c.chat(THREE).text == JOINED, "the client goes on"


def test_embed_gives_one_normalised_vector_per_text():
    with Client(args=ECHO) as c:
        vectors = c.embed(["a b", "a b", "zz"])
        assert len(vectors) == 3
        assert all(len(v) == 16 and all(isinstance(x, float) for x in v) for v in vectors)
        assert vectors[0] == vectors[1]
        assert vectors[2] != vectors[0]
        for v in vectors:
            assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5)
        assert c.embed([]) == []
        assert c.embed(("tuple",)) == c.embed(["tuple"])
        with pytest.raises(TypeError):
            c.embed("one str is not a list of texts")
        with pytest.raises(llama_shm.InvalidArgumentError):
            c.embed(["a\0b"])


def test_count_tokens_of_a_text_and_of_a_conversation():
    with Client(args=ECHO) as c:
        assert c.count_tokens("one two three") == 3
        assert c.count_tokens("") == 0
        assert c.count_tokens(THREE) == 2 + 3 + 4


def test_arguments_are_checked_before_anything_is_sent():
    with Client(args=ECHO) as c:
        with pytest.raises(ValueError, match="role 'robot'"):
            c.chat([("robot", "x")])
        with pytest.raises(ValueError, match="no 'content' key"):
            c.chat([{"role": "user"}])
        with pytest.raises(TypeError, match=r"messages\[1\]"):
            c.chat([("user", "ok"), "not a message"])
        with pytest.raises(TypeError):
            c.chat("a str is not a conversation")
        with pytest.raises(TypeError):
            c.chat([("user", b"bytes")])
        with pytest.raises(llama_shm.InvalidArgumentError):
            c.chat([("user", "a\0b")])
        with pytest.raises(ValueError, match="not both"):
            c.chat(THREE, json_schema={}, grammar="root ::= x")
        for bad_seed in (0, -1, 2**32, 1.5, True):
            with pytest.raises(ValueError, match="seed"):
                c.chat(THREE, seed=bad_seed)
        with pytest.raises(TypeError, match="drop_oldest"):
            c.chat(THREE, drop_oldest=1)
        with pytest.raises(ValueError):
            c.chat(THREE, max_tokens=0)
        with pytest.raises(ValueError):
            c.chat(THREE, deadline=0)
        with pytest.raises(TypeError):
            c.chat(THREE, json_schema={"not": {"json", "able"}})
        assert c.chat(THREE).text == JOINED, "the client goes on"


def test_the_asyncio_forms_of_chat():
    async def main():
        with Client(args=PACED) as c:
            r = await c.achat(THREE)
            chunks = [chunk async for chunk in c.achat_stream(THREE)]
            with pytest.raises(llama_shm.UnsupportedError):
                await c.achat(THREE, grammar="root ::= x")
            return r, chunks

    r, chunks = asyncio.run(main())
    assert r.text == JOINED and r.dropped_messages == 0
    assert "".join(chunks) == JOINED and len(chunks) > 3


def test_the_new_statuses_have_their_own_errors():
    assert _errors.ERRORS[24] is llama_shm.InvalidConstraintError
    assert _errors.ERRORS[25] is llama_shm.UnsupportedError
    assert _errors.ERRORS[26] is llama_shm.RequestTooLargeError
    for cls in (llama_shm.InvalidConstraintError, llama_shm.UnsupportedError, llama_shm.RequestTooLargeError):
        assert issubclass(cls, llama_shm.LlamaShmError)
        assert cls.__name__ in llama_shm.__all__
    assert issubclass(llama_shm.InvalidConstraintError, ValueError)
