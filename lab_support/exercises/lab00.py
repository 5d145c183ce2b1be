"""Visible cases of lab 00: collecting the text of a streamed chat completion.

The cases build chunks shaped like the ``openai`` package's
``ChatCompletionChunk`` objects, including the kinds that carry no text: a
first chunk with only the role, and a last chunk with only ``usage`` and no
choices, as servers send when ``stream_options.include_usage`` is set.
"""

from __future__ import annotations

from types import SimpleNamespace

from lab_support.grading import Case, register


def make_chunk(content: str | None = None, *, role: str | None = None, finish_reason: str | None = None, usage=None):
    """Return an object with the attributes of a ``ChatCompletionChunk`` that the exercise reads."""
    if usage is not None:
        return SimpleNamespace(choices=[], usage=SimpleNamespace(**usage))
    delta = SimpleNamespace(content=content, role=role)
    return SimpleNamespace(choices=[SimpleNamespace(delta=delta, finish_reason=finish_reason, index=0)], usage=None)


def typical_stream():
    return [
        make_chunk(role="assistant", content=""),
        make_chunk("Hello"),
        make_chunk(", "),
        make_chunk("world"),
        make_chunk(None, finish_reason="stop"),
    ]


register(
    "00.collect_stream",
    Case(
        "joins the text of every chunk",
        args=(typical_stream(),),
        expected="Hello, world",
        hint="join chunk.choices[0].delta.content over all chunks; the role-only chunk has '' and the last one None",
    ),
    Case(
        "skips chunks whose content is None",
        args=([make_chunk("a"), make_chunk(None), make_chunk("b")],),
        expected="ab",
        hint="delta.content is None on the chunk that carries the finish reason; treat it as ''",
    ),
    Case(
        "skips a usage-only chunk with no choices",
        args=([make_chunk("ok"), make_chunk(usage={"prompt_tokens": 3, "completion_tokens": 1})],),
        expected="ok",
        hint="with include_usage the last chunk has an empty choices list; check before indexing [0]",
    ),
    Case(
        "an empty stream gives an empty string",
        args=([],),
        expected="",
    ),
)
