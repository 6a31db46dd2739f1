"""A pty pair standing in for a device's serial port, shared by the simulators: the gateway opens the slave
path as its serial link, the simulator talks through the master, one session per open."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import struct
import termios
import tty
from collections.abc import Callable, Coroutine
from typing import Any

# While the slave is closed the master polls as hung up (add_reader would spin), so look this often for
# the gateway opening it.
PTY_OPEN_POLL_S = 0.02
# Once the slave is open, give the opener this long to configure and flush the port (pySerial flushes
# input on open) before the session starts and anything is sent.
PTY_SETTLE_S = 0.05
# Behind an RFC 2217 device server the opener's flush crosses TCP and the server's negotiation first: on a loaded
# machine it came after 50 ms, and the session then started again under a client that had read the first banner.
PTY_SETTLE_BEHIND_DEVICE_SERVER_S = 0.5
PTY_READ_BYTES = 4096

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class PtyTransport(asyncio.Transport):
    """The pty master as the transport of one session: non-blocking writes, buffered when the pty is full."""

    def __init__(self, port: PtyPort) -> None:
        super().__init__({"pty": port.slave_path})
        self._port = port
        self._pending = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        if self.closing:
            return
        if not self._pending:
            try:
                data = data[os.write(self._port.master_fd, data) :]
            except BlockingIOError:
                pass
            except OSError as exc:
                self._port.end_session(exc)
                return
            if not data:
                return
            self._port.loop.add_writer(self._port.master_fd, self._write_ready)
        self._pending.extend(data)

    def _write_ready(self) -> None:
        try:
            del self._pending[: os.write(self._port.master_fd, self._pending)]
        except BlockingIOError:
            return
        except OSError as exc:
            self._port.end_session(exc)
            return
        if not self._pending:
            self._port.loop.remove_writer(self._port.master_fd)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._port.end_session(None)

    def abort(self) -> None:
        self._port.end_session(None)


class PtyPort:
    """A pty pair standing in for a serial port: a new session (from `new_session`) each time the gateway
    opens the slave.

    The slave fd is closed here so that the gateway's open shows (master reads stop failing with EIO), and
    the master is in packet mode so that a flush of the gateway's input — pySerial does one on open — shows
    too: whatever was sent before it is gone, so the session starts again. `spawn` runs the watcher as a task
    its simulator owns (and cancels on stop).
    """

    def __init__(
        self,
        new_session: Callable[[], asyncio.Protocol],
        spawn: Spawn,
        log: Any,
        settle_s: float = PTY_SETTLE_S,
    ) -> None:
        self._new_session = new_session
        self._settle_s = settle_s
        self._spawn = spawn
        self._log = log
        self.loop = asyncio.get_running_loop()
        master_fd, slave_fd = os.openpty()
        try:
            tty.setraw(slave_fd)  # no echo, no line discipline: bytes pass unchanged
            self.slave_path = os.ttyname(slave_fd)
            fcntl.ioctl(master_fd, termios.TIOCPKT, struct.pack("i", 1))
            os.set_blocking(master_fd, False)
        except BaseException:
            os.close(master_fd)
            raise
        finally:
            os.close(slave_fd)
        self.master_fd = master_fd
        self.session: asyncio.Protocol | None = None
        self._transport: PtyTransport | None = None
        self._closed = False
        self._watch()

    def _watch(self) -> None:
        self._spawn(self._await_open(), "pty:watch")

    async def _await_open(self) -> None:
        early = bytearray()  # what the gateway wrote before the session started
        while (chunk := self._read_once()) is False:
            await asyncio.sleep(PTY_OPEN_POLL_S)
        assert chunk is not True  # _read_once answers bytes, None or False
        self._keep_data(chunk, early)
        await asyncio.sleep(self._settle_s)
        while isinstance(chunk := self._read_once(), bytes):
            self._keep_data(chunk, early)  # flush notices now are the opener's own: nothing was sent yet
        if chunk is False:  # closed again while settling
            self._watch()
            return
        self._transport = PtyTransport(self)
        self.session = self._new_session()
        self.session.connection_made(self._transport)
        self.loop.add_reader(self.master_fd, self._readable)
        if early:
            self.session.data_received(bytes(early))

    @staticmethod
    def _keep_data(chunk: bytes | None, into: bytearray) -> None:
        if chunk and chunk[0] == termios.TIOCPKT_DATA:
            into.extend(chunk[1:])

    def _read_once(self) -> bytes | None | bool:
        """One packet-mode read: a packet, None if there is nothing to read, False if the slave is closed."""
        try:
            return os.read(self.master_fd, PTY_READ_BYTES) or None
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EIO:
                return False
            raise

    def _readable(self) -> None:
        while self.session is not None:
            chunk = self._read_once()
            if chunk is None:
                return
            if chunk is False:
                self.end_session(None)
                return
            assert isinstance(chunk, bytes)
            if chunk[0] == termios.TIOCPKT_DATA:
                self.session.data_received(chunk[1:])
            elif chunk[0] & termios.TIOCPKT_FLUSHREAD:
                name = getattr(self.session, "name", None)
                self._log.info("gateway flushed its input, starting the session again", link=name)
                self.end_session(None)

    def end_session(self, exc: Exception | None) -> None:
        """The session is over (slave closed, flushed, or dropped); unless closing, wait for the next one."""
        session, self.session = self.session, None
        if session is None:
            return
        self.loop.remove_reader(self.master_fd)
        self.loop.remove_writer(self.master_fd)
        if self._transport is not None:
            self._transport.closing = True
        session.connection_lost(exc)
        if not self._closed:
            self._watch()

    def close(self) -> None:
        self._closed = True
        self.end_session(None)
        os.close(self.master_fd)
