"""Blocking model work off the event loop, one turn at a time, stoppable by the client.

A `Job` runs `work()` (a sync iterator: a generation, an analysis) in its own thread once the
engine grants it the model (`Engine.exclusive`, first come first served), and hands each item
to the event loop through an asyncio queue. `Job.cancel()` — called when the client goes away —
takes the job out of the queue if it is still waiting, or stops the iterator between two items:
the generator is closed (its hooks removed) and the model freed at once for the next request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from hatcat.engine import Cancelled, Engine

DISCONNECT_POLL_S = 0.25


@dataclass(frozen=True)
class Started:
    """The job got the model (first item of every job that runs)."""


@dataclass(frozen=True)
class Failed:
    error: BaseException


@dataclass(frozen=True)
class Ended:
    """No more items (after the last item, a Failed, or a cancel)."""


class ClientGone(Exception):
    """The client disconnected while the job waited or ran; the job is cancelled."""


class Job:
    """`exclusive=False`: the work takes the model itself when it needs it (batched analysis, the
    batch scheduler), and `Started` comes at once."""

    def __init__(self, engine: Engine, work: Callable[[], Iterator[Any]], exclusive: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancel = threading.Event()
        self._pending: asyncio.Task | None = None
        self._items: Iterator[Any] | None = None
        self._exclusive = exclusive
        threading.Thread(target=self._run, args=(engine, work), name="hatcat-job", daemon=True).start()

    def cancel(self) -> None:
        self._cancel.set()
        stop = getattr(self._items, "cancel", None)  # a batched generation stops at once, even while queued
        if stop is not None:
            stop()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass

    def _run(self, engine: Engine, work: Callable[[], Iterator[Any]]) -> None:
        try:
            with engine.exclusive(self._cancel) if self._exclusive else nullcontext():
                self._put(Started())
                items = self._items = work()
                if self._cancel.is_set():  # cancelled before `_items` was there to stop
                    self.cancel()
                try:
                    for item in items:
                        if self._cancel.is_set():
                            break
                        self._put(item)
                finally:
                    close = getattr(items, "close", None)
                    if close is not None:
                        close()
        except Cancelled:
            pass
        except Exception as err:  # noqa: BLE001 - any failure is handed to the route, which answers in the error shape
            self._put(Failed(err))
        finally:
            self._put(Ended())

    async def next(self) -> Any:
        """The next item (Started, work items, Failed, Ended)."""
        if self._pending is not None:
            task, self._pending = self._pending, None
            return await task
        return await self._queue.get()

    async def next_watching(self, request: Request) -> Any:
        """The next item, cancelling the job (ClientGone) if the client disconnects meanwhile."""
        task = self._pending or asyncio.ensure_future(self._queue.get())
        self._pending = None
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                self._pending = task  # keep the read, so no item is lost
                self.cancel()
                raise ClientGone()
