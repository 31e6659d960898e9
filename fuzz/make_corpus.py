#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ (deterministic; rerun after a format change).

text_write: [pad u16 LE][pad_char u8][capacity_choice u8][strict u8][tail UTF-8...], the
field order of `Input` in fuzz_targets/text_write.rs (arbitrary's derive, `tail` last).
region_read, worker_take: the region input format in fuzz/src/lib.rs.
request_area: the input format in fuzz/src/area.rs.
No seed may hit a planted bug (a Truncate cut inside a multi-byte char; a message record
holding a NUL): the fuzzer has to.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CAPS = [1, 2, 3, 4, 64, 4096, 32768]
PADS = ["a", "é", "€", "日", "𝄞", "\0"]


def text_input(pad, pad_char, cap, strict, tail):
    return (struct.pack("<HBBB", pad, PADS.index(pad_char), CAPS.index(cap), int(strict))
            + tail.encode("utf-8"))


TEXT = {
    "ascii_short": text_input(0, "a", 64, False, "hello, wörld"),
    "prompt_exact_fit": text_input(4095, "a", 4096, False, ""),
    "near_cut_strict": text_input(4093, "a", 4096, True, "€𝄞日é"),
    "long_4byte_strict": text_input(4999, "𝄞", 32768, True, "tail"),
    "interior_nul": text_input(10, "é", 4096, False, "ab\0cd"),
    "cap_one": text_input(0, "a", 1, False, ""),
}

# Extension page words (offset in the page, struct format), native = little-endian here.
EXT = {
    "magic": (0, "8s"), "version": (8, "<I"), "page_size": (12, "<I"), "creator_pid": (16, "<I"),
    "worker_pid": (20, "<I"), "features": (24, "<I"), "request_seq": (32, "<Q"),
    "client_pid": (40, "<I"), "request_flags": (44, "<I"), "auth_token": (48, "32s"),
    "response_seq": (80, "<Q"), "status": (88, "<I"), "response_len": (92, "<I"),
    "response_flags": (96, "<I"), "error_len": (100, "<I"), "error_arg0": (104, "<Q"),
    "error_arg1": (112, "<Q"), "prompt_tokens": (120, "<I"), "generated_tokens": (124, "<I"),
    "prompt_us": (128, "<Q"), "generation_us": (136, "<Q"), "finish_reason": (144, "<I"),
}


def region_input(ctrl=0, seq=0, fills=b"\0\0\0\0", shutdown=0, ext=None, system=b"", user=b"",
                 error=b"", response=b""):
    head = bytearray(256)
    for name, value in (ext or {}).items():
        off, fmt = EXT[name]
        struct.pack_into(fmt, head, off, value)
    return (struct.pack("<BQ4sHHH", ctrl, seq, fills, len(system), len(user), len(error))
            + bytes([shutdown]) + bytes(head) + system + user + error + response)


def ext_page(**words):
    base = {"magic": b"LLSHMEXT", "version": 1, "page_size": 4096, "creator_pid": 100}
    base.update(words)
    return base


ANSWER = "Bonjour 🌍".encode()
REGION = {
    "all_zero": region_input(),
    "request_and_answer": region_input(
        ctrl=1 | 16 | 32, seq=7,
        ext=ext_page(features=1, request_seq=7, client_pid=200, auth_token=bytes(range(1, 33)),
                     response_seq=7, response_len=len(ANSWER), prompt_tokens=12,
                     generated_tokens=3, prompt_us=1500, generation_us=900, finish_reason=1),
        system=b"You are terse.\0", user="héllo wörld €𝄞\0".encode(), response=ANSWER + b"\0"),
    "refused_too_long": region_input(
        ctrl=2, seq=9, shutdown=2,
        ext=ext_page(request_seq=9, auth_token=b"\x42" * 32, response_seq=9, status=3,
                     error_len=33, error_arg0=5000, error_arg1=2048),
        error=b"prompt is 5000 tokens, ctx 2048\0"),
    "unterminated_fields": region_input(
        ctrl=0, seq=3, fills=b"a\xff\xe2z", shutdown=1,
        ext=ext_page(request_seq=3, response_seq=3, response_len=40000, error_len=1000)),
    "partial_chars": region_input(
        ctrl=3, seq=0x0102030405060708, fills=b"\0\x80\0\0",
        ext=ext_page(version=2, request_seq=1, response_seq=0x0102030405060708, response_len=6),
        system=b"abc\xe2\x82\0", user=b"x\xf0\x9f", response=b"ok\xe2\x82\xac\xf0"),
}

# request_area: ctrl bits and kinds (fuzz/src/area.rs); a zero header is an honest chat.
RAW_CHECKSUM, RAW_USED, RAW_SIZE, SCRIBBLE, RAW_BYTES, SHORT_AREA = 1, 2, 4, 8, 16, 32
KIND = {"chat": 0, "embed": 1, "count": 2, "prompts": 3}


def area_input(ctrl=0, seq=1, kind="chat", kind_word=0, options=0, sample_seed=0, flags=0,
               max_tokens=0, deadline_us=0, used=0, size=0, checksum=0, scribble_at=0,
               scribble_xor=0, payload=b""):
    sel = KIND[kind] if kind is not None else 0x80
    return (struct.pack("<BQBIIIIIQIIQIB", ctrl, seq, sel, kind_word, options, sample_seed,
                        flags, max_tokens, deadline_us, used, size, checksum, scribble_at,
                        scribble_xor) + payload)


def record(tag, body):
    return struct.pack("<II", tag, len(body)) + body


def shaped(sel, body):
    return bytes([sel, len(body)]) + body


AREA = {
    "chat_raw": area_input(RAW_BYTES, 5, "chat", payload=record(1, b"Be brief.")
                           + record(2, "héllo €".encode()) + record(3, b"hi") + record(2, b"again")),
    "chat_schema_shaped": area_input(0, 6, "chat", sample_seed=42, options=1,
                                     payload=shaped(1, b"q") + shaped(3, b'{"type":"object"}')),
    "embed_shaped": area_input(0, 7, "embed", sample_seed=15,
                               payload=shaped(5, b"first") + shaped(5, b"second")),
    "count_text": area_input(RAW_BYTES, 8, "count", payload=record(32, b"count me")),
    "used_past_the_area": area_input(RAW_BYTES | RAW_USED, 9, "chat", used=(1 << 20) + 1,
                                     payload=record(2, b"x")),
    "short_area": area_input(RAW_BYTES | SHORT_AREA, 10, "chat", size=4, payload=record(2, b"x")),
    "scribbled": area_input(RAW_BYTES | SCRIBBLE, 11, "chat", scribble_at=9, scribble_xor=0x20,
                            payload=record(2, b"scribble me")),
    "unknown_kind": area_input(RAW_BYTES, 12, None, kind_word=7, payload=record(2, b"x")),
    "embeddings_result": area_input(0, 13, "embed", sample_seed=3,
                                    payload=struct.pack("<8f", 1, -2.5, 0, 3, 4, 5, 6, 7)),
}


def write(target, files):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    write("text_write", TEXT)
    write("region_read", REGION)
    write("worker_take", REGION)
    write("request_area", AREA)
