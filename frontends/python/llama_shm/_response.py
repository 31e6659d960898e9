"""What a request returns: :class:`Response` and its :class:`Usage`, read out of an
``lshm_response`` (whose text is then freed)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Optional

from ._library import CResponse, CResponseExtras

# LSHM_FINISH_* of include/llama_shm.h.
FINISH = {0: "unknown", 1: "stop", 2: "length", 3: "cancelled", 4: "deadline", 5: "error"}


@dataclass(frozen=True)
class Usage:
    """What a request cost, as the worker reports it (times in seconds)."""

    prompt_tokens: int
    """Tokens in the evaluated prompt."""
    generated_tokens: int
    """Tokens generated."""
    cached_tokens: int
    """Prompt tokens whose KV cache was reused (counted in ``prompt_tokens``, not evaluated)."""
    prompt_time: float
    """Time spent on the prompt."""
    generation_time: float
    """Time spent generating."""


@dataclass(frozen=True)
class Response:
    """An answer. ``finish`` is ``"stop"``, ``"length"``, ``"cancelled"``, ``"deadline"``,
    ``"error"`` or ``"unknown"`` (a seed-mode worker does not say)."""

    text: str
    finish: str
    truncated: bool
    """Cut at the worker's response limit."""
    seq: int
    """The request's sequence number."""
    usage: Usage
    dropped_messages: int = 0
    """Messages dropped from the front of a conversation to fit the context (``chat(...,
    drop_oldest=True)``)."""


def take_response(lib: Any, r: CResponse, extras: Optional[CResponseExtras] = None) -> Response:
    """The :class:`Response` of ``r`` (and ``extras``); frees ``r``'s text whatever happens."""
    try:
        text = ctypes.string_at(r.text, r.text_len).decode("utf-8") if r.text else ""
        return Response(
            text=text,
            finish=FINISH.get(r.finish, "unknown"),
            truncated=bool(r.truncated),
            seq=r.seq,
            usage=Usage(
                prompt_tokens=r.prompt_tokens,
                generated_tokens=r.generated_tokens,
                cached_tokens=r.cached_tokens,
                prompt_time=r.prompt_time_us / 1e6,
                generation_time=r.generation_time_us / 1e6,
            ),
            dropped_messages=0 if extras is None else extras.dropped_messages,
        )
    finally:
        lib.lshm_response_free(ctypes.byref(r))
