"""Blocking engine work off the event loop, stoppable by the client.

A `Job` runs `work()` (a sync iterator: an `Engine.generate` generation, an `Engine.analyze`
analysis; the engine takes the model when it needs it) in its own thread and hands each item to
the event loop through an asyncio queue. `Job.cancel()` — called when the client goes away — stops
the iterator between two items (a generation leaves the batch, or the queue, at once).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from hatcat.errors import Cancelled

DISCONNECT_POLL_S = 0.25


@dataclass(frozen=True)
class Failed:
    error: BaseException


@dataclass(frozen=True)
class Ended:
    """No more items (after the last item, a Failed, or a cancel)."""


class ClientGone(Exception):
    """The client disconnected while the job waited or ran; the job is cancelled."""


class Job:
    def __init__(self, work: Callable[[], Iterator[Any]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancel = threading.Event()
        self._pending: asyncio.Task | None = None
        self._items: Iterator[Any] | None = None
        threading.Thread(target=self._run, args=(work,), name="hatcat-job", daemon=True).start()

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

    def _run(self, work: Callable[[], Iterator[Any]]) -> None:
        try:
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
        """The next item (work items, Failed, Ended)."""
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
