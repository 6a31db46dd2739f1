"""A serial device server for tests and demos: RFC 2217 on a loopback TCP port, in front of a serial port (a
simulator's pty), as a Moxa or Lantronix box stands in front of a recorder's RS-232 port. pySerial's PortManager
answers the RFC 2217 negotiation."""

from __future__ import annotations

import asyncio
import os
from typing import Any

READ_BYTES = 4096


def _three_wire_serial(device_path: str) -> Any:
    """The device server's side of the pty as a pySerial port without modem lines (a pty has none, like a 3-wire
    RS-232 cable): CTS and DSR read as asserted, RI and CD as not, DTR/RTS changes are accepted and ignored."""
    import serial

    class ThreeWireSerial(serial.Serial):
        cts = dsr = property(lambda self: True)
        ri = cd = property(lambda self: False)

        def _update_dtr_state(self) -> None:
            pass

        def _update_rts_state(self) -> None:
            pass

    return ThreeWireSerial(device_path, timeout=0)


class Rfc2217DeviceServer:
    """A serial device server on loopback: pySerial's PortManager answers each client's RFC 2217 negotiation and
    bridges it to the serial port at `device_path`, opened while that client is connected (as a real device server
    holds its port)."""

    def __init__(self, device_path: str) -> None:
        self.device_path = device_path
        self.clients = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Starts listening; returns the port."""
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    def drop_clients(self) -> None:
        """Closes every client connection (a device server restarting, or taking the port for another client)."""
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from serial import rfc2217

        loop = asyncio.get_running_loop()
        self.clients += 1
        self._writers.add(writer)
        port = _three_wire_serial(self.device_path)
        manager = rfc2217.PortManager(port, writer)

        def forward_from_port() -> None:
            try:
                data = os.read(port.fileno(), READ_BYTES)
            except OSError:
                data = b""
            if data:
                writer.write(b"".join(manager.escape(data)))

        loop.add_reader(port.fileno(), forward_from_port)
        try:
            while data := await reader.read(1024):
                for chunk in manager.filter(data):
                    port.write(chunk)
        except ConnectionError:
            pass
        finally:
            loop.remove_reader(port.fileno())
            port.close()
            self._writers.discard(writer)
            writer.close()
