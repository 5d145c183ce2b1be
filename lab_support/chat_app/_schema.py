"""The request body of ``POST /api/chat``, read with a size limit and validated before any upstream call."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lab_support.chat_app._config import MAX_BODY_BYTES, MAX_MESSAGES, MAX_OUTPUT_TOKENS

EXAMPLE_BODY = '{"messages": [{"role": "user", "content": "Hi"}]}'
MAX_REPORTED_ERRORS = 5


class Message(BaseModel):
    """One message of the conversation: who wrote it and its text."""

    # strict: a number or a list is rejected instead of being turned into a string.
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)

    @field_validator("content")
    @classmethod
    def content_has_text(cls, content: str) -> str:
        if not content.strip():
            raise ValueError("content must contain text, not only whitespace")
        return content


class ChatRequest(BaseModel):
    """The body of ``POST /api/chat``: the conversation so far, and how to answer it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = True
    # None: the server's default answer length.
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)


def describe_validation_error(error: ValidationError) -> str:
    """Turn pydantic's errors into one message that names each bad field, such as ``messages[0].role``."""
    problems = []
    for detail in error.errors()[:MAX_REPORTED_ERRORS]:
        location = ""
        for part in detail["loc"]:
            if isinstance(part, int):
                location += f"[{part}]"
            elif location:
                location += f".{part}"
            else:
                location = str(part)
        message = detail["msg"].removeprefix("Value error, ")
        problems.append(f"{location or 'body'}: {message}")
    more = error.error_count() - MAX_REPORTED_ERRORS
    if more > 0:
        problems.append(f"and {more} more")
    return "Invalid chat request: " + "; ".join(problems) + f". Send a body such as {EXAMPLE_BODY}."


def require_json(request: Request) -> None:
    """Reject a body that is not declared as JSON with 415.

    A browser sends a cross-site form or a ``text/plain`` fetch without asking
    the server first (no CORS preflight), so accepting only
    ``application/json`` keeps other sites' pages from posting to the route.
    """
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(
            415,
            f"Unsupported content type {content_type or '(none)'!r}: send the body as JSON with Content-Type: application/json.",
        )


async def read_chat_request(request: Request, *, max_body_bytes: int = MAX_BODY_BYTES) -> ChatRequest:
    """Read the body, stopping at ``max_body_bytes``, and validate it: 413, 400 or 422 on failure."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise HTTPException(413, _too_large(f"{declared} bytes", max_body_bytes))

    # Content-Length may be missing (chunked upload) or wrong, so count while reading.
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise HTTPException(413, _too_large(f"over {max_body_bytes} bytes", max_body_bytes))

    try:
        data = json.loads(body)
    except ValueError as error:
        raise HTTPException(400, f"The request body is not valid JSON ({error}). Send a JSON object such as {EXAMPLE_BODY}.") from None

    try:
        return ChatRequest.model_validate(data)
    except ValidationError as error:
        raise HTTPException(422, describe_validation_error(error)) from None


def _too_large(size: str, limit: int) -> str:
    return f"The request body is {size}; the limit is {limit} bytes. Send a shorter conversation."
