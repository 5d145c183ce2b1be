"""Calls to the upstream, and what the browser gets when they fail before the first byte.

Before the route has sent its status line, a failure becomes an HTTP status:

- the upstream's 429 stays 429, with its ``Retry-After`` passed on;
- any other upstream error status, a refused or broken connection, or a
  response that is not a chat stream becomes 502 Bad Gateway;
- a connect, read or pool timeout, or the total deadline, becomes 504
  Gateway Timeout.

The upstream's error body is never relayed, because it is written for the
server (it may quote the request or part of the key). It is logged instead.
"""

from __future__ import annotations

import email.utils
import logging
import math
from collections.abc import AsyncIterator

import anyio
import httpx
from fastapi import HTTPException
from httpx_sse import SSEError

from lab_support.chat_app._config import DEFAULT_MAX_TOKENS
from lab_support.chat_app._errors import DeadlineExceeded, UpstreamBroken, UpstreamTimeout
from lab_support.chat_app._events import SSE_MEDIA_TYPE
from lab_support.chat_app._schema import ChatRequest
from lab_support.sse import ChatChunk, IncompleteStreamError, StreamErrorEvent, aiter_chat_chunks

logger = logging.getLogger("lab_support.chat_app")

MAX_LOGGED_BODY_CHARS = 300
REDACTED = "[redacted]"


def upstream_body(chat_request: ChatRequest, model: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """Build the OpenAI chat completion request for the upstream, with the model chosen by the server."""
    return {
        "model": model,
        "messages": [message.model_dump() for message in chat_request.messages],
        "max_tokens": chat_request.max_tokens or default_max_tokens,
        "stream": chat_request.stream,
    }


def retry_after_header(value: str | None) -> str | None:
    """Return the Retry-After value to pass on (delta-seconds or an HTTP date), or None when it is missing or invalid.

    Fractional seconds, which some servers send, are rounded up to whole
    seconds, the only form the header allows.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return str(math.ceil(seconds)) if math.isfinite(seconds) and seconds >= 0 else None
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return value


def error_for_upstream(failure: httpx.Response | Exception) -> HTTPException:
    """Return the HTTPException for a failed upstream call, given its error response or the exception it raised.

    The message describes the failure in the route's own words. Nothing from
    the upstream's body or headers reaches the browser except Retry-After.
    """
    if isinstance(failure, httpx.Response):
        if failure.status_code == 429:
            retry_after = retry_after_header(failure.headers.get("retry-after"))
            wait = f" Retry after {retry_after} s." if retry_after and retry_after.isdigit() else " Retry later."
            headers = {"Retry-After": retry_after} if retry_after else None
            return HTTPException(429, "The model provider is rate limiting requests." + wait, headers=headers)
        return HTTPException(502, f"The model provider responded with HTTP {failure.status_code}. Try again later.")

    if isinstance(failure, (httpx.TimeoutException, DeadlineExceeded, TimeoutError)):
        return HTTPException(504, "The model provider did not answer in time. Try again later.")
    if isinstance(failure, httpx.HTTPError):
        return HTTPException(502, "The model provider could not be reached. Try again later.")
    return HTTPException(502, "The model provider sent an answer the route cannot read. Try again later.")


def redact(text: str, secret: str | None) -> str:
    """Replace every copy of ``secret`` in ``text``, for log lines that quote the upstream."""
    return text.replace(secret, REDACTED) if secret else text


async def open_stream(client: httpx.AsyncClient, body: dict, *, seconds: float, secret: str | None) -> httpx.Response:
    """Send a streaming request and return the response once its 200 headers arrive, or raise HTTPException.

    The caller must close the returned response.
    """
    request = client.build_request("POST", "chat/completions", json=body)
    try:
        with anyio.fail_after(seconds):
            response = await client.send(request, stream=True)
    except TimeoutError:
        logger.warning("upstream %s did not send response headers within the %.3g s deadline", request.url, seconds)
        raise error_for_upstream(DeadlineExceeded(seconds)) from None
    except httpx.HTTPError as error:
        logger.warning("upstream request to %s failed before the response: %s", request.url, _describe(error))
        raise error_for_upstream(error) from None

    if response.status_code != 200:
        try:
            with anyio.fail_after(seconds):
                await response.aread()
            logged_body = redact(response.text[:MAX_LOGGED_BODY_CHARS], secret)
        except (TimeoutError, httpx.HTTPError):
            logged_body = "(body not read)"
        finally:
            await response.aclose()
        logger.warning("upstream %s responded %d: %s", request.url, response.status_code, logged_body)
        raise error_for_upstream(response)

    media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != SSE_MEDIA_TYPE:
        await response.aclose()
        logger.warning("upstream %s answered a streaming request with %r instead of %s", request.url, media_type, SSE_MEDIA_TYPE)
        raise error_for_upstream(ValueError(f"content type {media_type!r}"))
    return response


async def complete(client: httpx.AsyncClient, body: dict, *, seconds: float, secret: str | None) -> dict:
    """Send a non-streaming request within ``seconds`` and return ``{"answer", "finish_reason"}``, or raise HTTPException."""
    try:
        with anyio.fail_after(seconds):
            response = await client.post("chat/completions", json=body)
    except TimeoutError:
        logger.warning("upstream answer did not arrive within the %.3g s deadline", seconds)
        raise error_for_upstream(DeadlineExceeded(seconds)) from None
    except httpx.HTTPError as error:
        logger.warning("upstream request failed: %s", _describe(error))
        raise error_for_upstream(error) from None

    if response.status_code != 200:
        logged_body = redact(response.text[:MAX_LOGGED_BODY_CHARS], secret)
        logger.warning("upstream %s responded %d: %s", response.request.url, response.status_code, logged_body)
        raise error_for_upstream(response)

    try:
        choice = response.json()["choices"][0]
        answer = choice["message"]["content"]
        if not isinstance(answer, str):
            raise TypeError(f"content is {type(answer).__name__}, not a string")
    except (ValueError, LookupError, TypeError) as error:
        logger.warning("upstream %s sent an unreadable chat completion: %s", response.request.url, error)
        raise error_for_upstream(error) from None
    return {"answer": answer, "finish_reason": choice.get("finish_reason")}


async def upstream_chunks(
    response: httpx.Response, *, read_timeout_s: float | None, secret: str | None = None
) -> AsyncIterator[ChatChunk]:
    """Yield the chunks of a streaming response, turning transport failures into stream errors.

    Raises :class:`UpstreamTimeout`, :class:`UpstreamBroken`, or the
    ``StreamErrorEvent`` and ``IncompleteStreamError`` of ``lab_support.sse``.
    """
    try:
        async for chunk in aiter_chat_chunks(response):
            yield chunk
    except StreamErrorEvent as error:
        logger.warning("upstream %s sent an error event: %s", response.request.url, redact(repr(error.error), secret))
        raise
    except IncompleteStreamError:
        logger.warning("upstream stream from %s ended without [DONE]", response.request.url)
        raise
    except httpx.TimeoutException as error:
        logger.warning("upstream stream from %s timed out: %s", response.request.url, _describe(error))
        raise UpstreamTimeout(read_timeout_s) from error
    except SSEError as error:
        raise UpstreamBroken(f"not an event stream ({error})") from error
    except httpx.HTTPError as error:
        logger.warning("upstream stream from %s broke: %s", response.request.url, _describe(error))
        raise UpstreamBroken(_describe(error)) from error
    except ValueError as error:
        logger.warning("upstream stream from %s sent an unreadable event: %s", response.request.url, error)
        raise UpstreamBroken("an event that is not a chat completion chunk") from error


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
