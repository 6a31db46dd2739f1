"""Handing results from the store's threads back to the event loop: futures settled on the loop thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

# (future, value, error) of one op or read; the future is None only for the writer's stop marker.
Result = tuple["asyncio.Future[Any] | None", Any, "BaseException | None"]


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Run `callback(*args)` on the loop thread, from any thread."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass  # the loop is closed: nobody is left to await these futures


# ---- these run on the loop thread


def settle(future: asyncio.Future[Any] | None, value: Any, error: BaseException | None) -> None:
    if future is None or future.done():  # cancelled by its awaiter: the write happened anyway
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def settle_all(results: list[Result]) -> None:
    for future, value, error in results:
        settle(future, value, error)
