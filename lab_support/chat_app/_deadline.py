"""A total deadline over an async iterator, checked while waiting for each item as well as between items."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeVar

import anyio

from lab_support.chat_app._errors import DeadlineExceeded

T = TypeVar("T")


async def with_deadline(items: AsyncIterable[T], seconds: float) -> AsyncIterator[T]:
    """Yield the items of ``items`` until ``seconds`` have passed since the first request for one.

    Then raise :class:`DeadlineExceeded`, even in the middle of a wait, and
    close ``items``. A per-read timeout cannot do this: an upstream that sends
    one chunk every few seconds stays under it forever.
    """
    deadline = time.monotonic() + seconds
    iterator = items.__aiter__()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(seconds)
            # A cancel scope runs the wait in this task. asyncio.wait_for would
            # run it in a second task, which can outlive a cancelled caller.
            try:
                with anyio.fail_after(remaining):
                    item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise DeadlineExceeded(seconds) from None
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
