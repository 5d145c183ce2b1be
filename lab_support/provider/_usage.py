"""Token counts for billing and rate limits when the upstream reports none.

The provider prefers the upstream's ``usage``. Where it is missing (the
llama.cpp server in llama-cpp-python 0.3.36 sends no usage chunk when
streaming, even with ``stream_options.include_usage``), it counts:

- output tokens of a stream: one per chunk that carries content or a tool
  call, because llama.cpp streams one token per chunk (checked with
  llama-cpp-python 0.3.36). A server that groups tokens is undercounted.
- output tokens of a non-streaming reply without usage: the content length
  divided by ``CHARS_PER_TOKEN``, rounded up.
- input tokens: an estimate of ``CHARS_PER_TOKEN`` characters per token
  over the message contents, plus ``TOKENS_PER_MESSAGE`` per message for
  the role and separators and ``REPLY_PRIMING_TOKENS`` for the reply's start.

The estimate ignores the chat template's hidden text (such as a default
system prompt), so it runs lower than the upstream's own count for the same
messages. Non-streaming responses whose usage was counted this way carry
the header ``x-usage-estimated: true``. The headers of a stream are sent
before its usage is known, so for streams only ``LedgerEntry.estimated``
records it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

# A rule of thumb for English text with BPE tokenizers.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
REPLY_PRIMING_TOKENS = 3

# Reserved against the tokens-per-minute limit when a request sets no max_tokens.
DEFAULT_MAX_TOKENS_RESERVATION = 256


def estimate_text_tokens(text: str) -> int:
    """Return ``len(text) / CHARS_PER_TOKEN``, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: Iterable[Mapping]) -> int:
    """Estimate the input tokens of chat ``messages`` (see the module docstring)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE + estimate_text_tokens(_message_text(message))
    return total


def requested_output_tokens(body: Mapping) -> int:
    """Return the output tokens a request may use: ``max_completion_tokens``, ``max_tokens`` or the default reservation."""
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_TOKENS_RESERVATION


def chunk_token_count(chunk: Mapping) -> int:
    """Return the output tokens in one ``chat.completion.chunk``: one per choice with content or a tool call."""
    count = 0
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls"):
            count += 1
    return count


def completion_text(response: Mapping) -> str:
    """Return the concatenated message contents of a non-streaming ``chat.completion``."""
    parts = []
    for choice in response.get("choices") or []:
        content = (choice.get("message") or {}).get("content")
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """Return an OpenAI ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def read_usage(usage: object) -> tuple[int, int] | None:
    """Return ``(prompt_tokens, completion_tokens)`` from an upstream ``usage`` object, or None if unusable."""
    if not isinstance(usage, Mapping):
        return None
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        return None
    return prompt_tokens, completion_tokens


def _message_text(message: Mapping) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""
