"""manualRecord start+stop through the HTTP API vs the same START/STOP sent raw to the recorder, same run.

The recorder simulator and the gateway run as processes of their own; this process is only the client.
Each iteration does one API pair (KeepCall type=manualRecord, then unmark=1, on a Controlled
extension's call) and one raw pair (START/STOP written on a separate TCP connection to the
simulator, on another channel), interleaved so that noise hits both alike. Prints the medians and
the gateway's overhead per start+stop.

    python bench/control_bench.py [--iterations 300]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from benchlib import ROOT, free_port, percentile  # noqa: E402 — bench/ is the script folder

sys.path.insert(0, str(ROOT))

from drivers.trunkrec import protocol as p  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from simulators.trunkrec import TrunkRecorderSimulator  # noqa: E402

configure_logging("warning")  # the bench prints its own table; the components stay quiet

API_KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
API_CHANNEL = "1/5"  # mapped to the controlled extension 8856
RAW_CHANNEL = "1/6"  # not mapped: the gateway ignores what happens there
READY_TIMEOUT_S = 30.0
LOG_LEVEL = os.environ.get("BENCH_GATEWAY_LOG_LEVEL", "warning")  # debug: per-request timings in the log
LOG_FILE = os.environ.get("BENCH_GATEWAY_LOG")
WARMUP_ITERATIONS = 20


class SimulatorProcess:
    """The recorder simulator in a child process, driven over a pipe (place_call, answer, release, …)."""

    def __init__(self) -> None:
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.Process(target=self._serve, args=(child,), daemon=True)
        self._process.start()
        self.port: int = self._conn.recv()

    def call(self, method: str, *args: object) -> object:
        self._conn.send((method, args))
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send(("stop", ()))
        self._process.join(timeout=10)

    @staticmethod
    def _serve(conn) -> None:  # runs in the child
        async def run() -> None:
            configure_logging("warning")
            sim = TrunkRecorderSimulator(channels=60, name="bench")
            conn.send(await sim.start_tcp("127.0.0.1", 0))
            stopping = asyncio.Event()

            def on_command() -> None:
                while conn.poll():
                    method, args = conn.recv()
                    if method == "stop":
                        stopping.set()
                        return
                    result = getattr(sim, method)(*args)
                    conn.send(result if isinstance(result, (str, int, type(None))) else None)

            asyncio.get_running_loop().add_reader(conn.fileno(), on_command)
            await stopping.wait()
            await sim.stop()

        asyncio.run(run())


def write_config(folder: Path, http_port: int, recorder_port: int, sync: str) -> Path:
    config = folder / "control.yaml"
    config.write_text(
        f"""
http: {{host: 127.0.0.1, port: {http_port}}}
store: {{path: "{folder / "control.db"}", sync: {sync}}}
api:
  keys: [{{key: {API_KEY}, name: bench}}]
extensions:
  - {{number: "8856", mode: controlled, channel: "{API_CHANNEL}"}}
recorders:
  - {{name: trunk1, url: "tcp://127.0.0.1:{recorder_port}", timeout: 2.0}}
log: {{level: {LOG_LEVEL}}}
"""
    )
    return config


async def wait_for_health(session: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            async with session.get("/healthz") as response:
                if (await response.json())["recorders"]["trunk1"]["state"] == "up":
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("gateway did not connect to the recorder in time")


async def api_answer(session: aiohttp.ClientSession, **params: str) -> str:
    async with session.get("/verba/api", params={"apiKey": API_KEY, **params}) as response:
        return await response.text()


async def fresh_api_call(session: aiohttp.ClientSession, sim: SimulatorProcess) -> str:
    """End the extension's call (if any), wait until the gateway saw that, place a new one; its callID."""
    if sim.call("channel_state", API_CHANNEL) != "idle":
        sim.call("release", API_CHANNEL)
        while 'code="0"' in await api_answer(session, action="GetCallID", extension="8856", status="ongoing"):
            await asyncio.sleep(0.001)
    lookup = asyncio.create_task(api_answer(session, action="GetCallID", extension="8856", status="ongoing,next"))
    await asyncio.sleep(0)  # let the lookup go out; with ongoing,next it finds the call either way
    sim.call("place_call", API_CHANNEL, "01707392200", "8856")
    sim.call("answer", API_CHANNEL)
    return (await lookup).split("<CallID>")[1].split("<")[0]


def fresh_raw_call(sim: SimulatorProcess) -> None:
    if sim.call("channel_state", RAW_CHANNEL) != "idle":
        sim.call("release", RAW_CHANNEL)
    sim.call("place_call", RAW_CHANNEL, "01707392201", "7777")
    sim.call("answer", RAW_CHANNEL)


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client, so the timings measure the gateway, not a client library."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawHttp:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, query: str) -> bytes:
        self._writer.write(f"GET /verba/api?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        return await self._reader.readexactly(length)

    def close(self) -> None:
        self._writer.close()


async def api_pair(http: RawHttp, call_id: str) -> float:
    started = time.perf_counter()
    for unmark in ("0", "1"):
        body = await http.get(f"action=KeepCall&apiKey={API_KEY}&callID={call_id}&type=manualRecord&unmark={unmark}")
        if b'code="0"' not in body:
            raise SystemExit(f"API refused: {body.decode()}")
    return time.perf_counter() - started


async def lookup_pair(http: RawHttp) -> float:
    """Two plain GetCallID requests: what the HTTP hop alone costs, for attributing the overhead."""
    started = time.perf_counter()
    for _ in range(2):
        await http.get(f"action=GetCallID&apiKey={API_KEY}&extension=8856&status=ongoing")
    return time.perf_counter() - started


async def raw_pair(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> float:
    started = time.perf_counter()
    for verb in (p.START, p.STOP):
        tag = f"b{index}{verb[0]}"
        writer.write(p.encode_request(tag, verb, RAW_CHANNEL))
        while True:  # events for other connections' actions are interleaved: skip to our reply
            line = (await reader.readline()).decode().rstrip("\r\n")
            if line.startswith(tag + " "):
                if " OK" not in line:
                    raise SystemExit(f"simulator refused: {line}")
                break
    return time.perf_counter() - started


async def main(iterations: int, sync: str) -> None:
    sim = SimulatorProcess()
    recorder_port = sim.port
    http_port = free_port()
    with tempfile.TemporaryDirectory(prefix="control-bench-") as tmp:
        config = write_config(Path(tmp), http_port, recorder_port, sync)
        gateway_log = open(LOG_FILE or Path(tmp) / "gateway.log", "w")  # noqa: SIM115 — closed below
        gateway = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=gateway_log,
        )
        try:
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{http_port}") as session:
                await wait_for_health(session)
                reader, writer = await asyncio.open_connection("127.0.0.1", recorder_port)
                http = await RawHttp.connect(http_port)
                api_times, raw_times, lookup_times = [], [], []
                for index in range(WARMUP_ITERATIONS + iterations):
                    # A fresh call each time, as in real use (a call has a few recordings, not hundreds).
                    call_id = await fresh_api_call(session, sim)
                    api_time = await api_pair(http, call_id)
                    fresh_raw_call(sim)
                    raw_time = await raw_pair(reader, writer, index)
                    lookup_time = await lookup_pair(http)
                    if index >= WARMUP_ITERATIONS:
                        api_times.append(api_time)
                        raw_times.append(raw_time)
                        lookup_times.append(lookup_time)
                writer.close()
                http.close()
        finally:
            gateway.send_signal(signal.SIGTERM)
            await gateway.wait()
            gateway_log.close()
            sim.close()

    def ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1000

    print(
        f"{iterations} start+stop pairs each, interleaved; gateway (store sync: {sync}), simulator and client"
        " in three processes"
    )
    print(f"{'path':<22}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for name, values in (
        ("raw START/STOP", raw_times),
        ("API manualRecord", api_times),
        ("API 2x GetCallID", lookup_times),
    ):
        print(f"{name:<22}{ms(values, 50):>9.2f}{ms(values, 90):>9.2f}{ms(values, 99):>9.2f}")
    print(f"gateway overhead per start+stop (median): {ms(api_times, 50) - ms(raw_times, 50):.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--sync", choices=("full", "normal"), default="full", help="the gateway's store.sync")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.iterations, arguments.sync))
