"""Serial ports for every link, opened by one function: local devices and ptys, and the pySerial URLs of serial
device servers (`rfc2217://`, `socket://`). Ports with a file descriptor are asyncio transports
(pyserial-asyncio-fast); an `rfc2217://` port has none and is read and written in executor threads instead."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.config import SerialSettings

URL_RFC2217_SCHEME = "rfc2217"
# rfc2217:// ports have no file descriptor to watch: they are read in an executor thread whose read returns at
# least this often, so that close() and pause_reading() are noticed.
RFC2217_READ_POLL_S = 0.2
RFC2217_READ_MAX_BYTES = 4096

_Protocol = TypeVar("_Protocol", bound=asyncio.Protocol)


def port_settings(settings: SerialSettings | None) -> dict[str, Any]:
    """pySerial keyword arguments for the configured line settings (defaults: 9600 8N1, no flow control)."""
    settings = settings or SerialSettings()
    return dict(
        baudrate=settings.baudrate,
        bytesize=settings.bytesize,
        parity=settings.parity,
        stopbits=settings.stopbits,
        xonxoff=settings.xonxoff,
        rtscts=settings.rtscts,
    )


async def open_serial_connection(
    protocol_factory: Callable[[], _Protocol],
    url: str,
    settings: SerialSettings | None,
    *,
    orphans: set[asyncio.Task[Any]],
) -> tuple[asyncio.Transport, _Protocol]:
    """Opens a serial port (a path or a pySerial URL) off the event loop and connects `protocol_factory()` to it.

    No timeout of its own: the caller bounds the wait. If the wait is cancelled while the open still runs in its
    thread, the task is kept in `orphans` (the caller's set) until it finishes, and the port it opened is closed.
    `connection_made` is scheduled with call_soon, as asyncio transports do."""
    import serial_asyncio_fast  # only links that use a serial port need it loaded

    loop = asyncio.get_running_loop()
    if urlsplit(url).scheme == URL_RFC2217_SCHEME:
        opening: Coroutine[Any, Any, tuple[Any, Any]] = _open_in_executor(
            loop, protocol_factory, url, port_settings(settings)
        )
    else:
        opening = serial_asyncio_fast.create_serial_connection(loop, protocol_factory, url, **port_settings(settings))
    return await open_without_orphans(opening, orphans)


async def _open_in_executor(
    loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], _Protocol], url: str, settings: dict[str, Any]
) -> tuple[ExecutorSerialTransport, _Protocol]:
    import serial

    opener = partial(serial.serial_for_url, url, timeout=RFC2217_READ_POLL_S, **settings)
    serial_instance = await loop.run_in_executor(None, opener)
    protocol = protocol_factory()
    return ExecutorSerialTransport(loop, protocol, serial_instance), protocol


async def open_without_orphans(
    opening: Coroutine[Any, Any, tuple[Any, Any]], orphans: set[asyncio.Task[Any]]
) -> tuple[Any, Any]:
    """Awaits an open that runs in an executor; if the wait is cancelled (timeout, close), the open still
    finishes in its thread, and what it opened is closed then instead of leaking."""
    task = asyncio.ensure_future(opening)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        orphans.add(task)

        def close_late(finished: asyncio.Task[Any]) -> None:
            orphans.discard(finished)
            if not finished.cancelled() and finished.exception() is None:
                finished.result()[0].close()

        task.add_done_callback(close_late)
        raise


class ExecutorSerialTransport(asyncio.Transport):
    """A serial port without a file descriptor to watch (pySerial's rfc2217:// handler): read and written in
    executor threads, never on the loop. Reading pauses while the protocol asks it to (pause_reading)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, serial_instance: Any) -> None:
        super().__init__(extra={"serial": serial_instance})
        self._loop = loop
        self._protocol = protocol
        self._serial = serial_instance
        self._closing = False
        self._reading_allowed = asyncio.Event()
        self._reading_allowed.set()
        self._writes: deque[bytes] = deque()
        self._writer: asyncio.Task[None] | None = None
        loop.call_soon(protocol.connection_made, self)
        self._reader = loop.create_task(self._read_loop(), name=f"read {serial_instance.portstr}")

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._reading_allowed.set()

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self._reading_allowed.clear()

    def resume_reading(self) -> None:
        self._reading_allowed.set()

    def is_reading(self) -> bool:
        return self._reading_allowed.is_set()

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._writes.append(bytes(data))
        if self._writer is None:
            self._writer = self._loop.create_task(self._write_pending())

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def _read_some(self) -> bytes:  # runs in an executor thread
        data = self._serial.read(1)  # returns after RFC2217_READ_POLL_S at the latest
        if data:
            waiting = self._serial.in_waiting
            if waiting:
                data += self._serial.read(min(waiting, RFC2217_READ_MAX_BYTES))
        return data

    async def _read_loop(self) -> None:
        error: Exception | None = None
        try:
            while not self._closing:
                await self._reading_allowed.wait()
                if self._closing:
                    break
                data = await self._loop.run_in_executor(None, self._read_some)
                if data:  # even when closing: bytes already read are framed, not dropped
                    self._protocol.data_received(data)
        except (OSError, ValueError) as exc:  # SerialException is an OSError; a closed port raises ValueError
            error = exc
        finally:
            self._closing = True
            if self._writer is not None:
                self._writer.cancel()
            try:
                await self._loop.run_in_executor(None, self._serial.close)
            except Exception:  # closing a broken port: nothing more to do
                pass
            self._protocol.connection_lost(error)

    async def _write_pending(self) -> None:
        try:
            while self._writes and not self._closing:
                await self._loop.run_in_executor(None, self._serial.write, self._writes.popleft())
        except (OSError, ValueError):
            self.close()
        finally:
            self._writer = None
