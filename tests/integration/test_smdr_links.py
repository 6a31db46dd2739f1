"""SMDR links end to end: PBX bytes over real sockets and a pty → journal → parser → calls → HTTP API."""

from __future__ import annotations

import asyncio
import os
import tty
import xml.etree.ElementTree as ET

import aiohttp

from gateway.config import (
    ExtensionConfig,
    LinkConfig,
    RecorderConfig,
)
from gateway.model import RecordingMode
from gateway.service import Gateway
from tests.conftest import API_KEY, eventually

WAIT_S = 10.0

IPO_TRANSFER_1 = (
    b"2008/06/28 09:30:57,00:00:13,7,01707392200,I,299999,299999,,0,1000014160,1,E4750,John Smith,T9002,LINE 1.2,11,0"
)
IPO_TRANSFER_2 = (
    b"2008/06/28 09:30:57,00:00:21,0,01707392200,I,299999,299999,,0,1000014160,0,E4751,Jane Doe,T9002,LINE 1.2,0,0"
)
IPO_LOST = b"2008/06/28 09:28:41,00:00:00,9,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe Bloggs,T9161,LINE 5.1,0,0"
IPO_SIP_30 = (
    b"2026/11/23 10:15:00,00:02:05,3,12345@192.0.2.123,I,4400,4400,,0,1000020001,0,E4400,<b>Mallory</b>,T9010,"
    b"LINE 9.1,0,0,n,,,0.00,,0.00,0,0,0.00,0.00,,,"
)
IPO_OUT_35 = (
    b"2026/11/23 10:20:00,00:00:42,0,4401,O,0044207946000,0044207946000,77,0,1000020002,0,E4401,Agent,T9011,"
    b"LINE 9.2,0,0,n,,,0.00,,0.00,0,0,0.00,0.00,,,192.0.2.1,1,192.0.2.2,2,2026/11/23 10:21:00"
)


async def api(gateway: Gateway, **params) -> ET.Element:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/verba/api", params={"apiKey": API_KEY, **params}) as response,
    ):
        return ET.fromstring(await response.read())


async def call_info(gateway: Gateway, **lookup) -> ET.Element:
    root = await api(gateway, action="GetCallInformation", **lookup)
    assert root.find("Response").get("code") == "0", ET.tostring(root)
    return root.find("verbacdr")


async def test_ip_office_pushed_to_listen(tmp_path, started, unused_tcp_port, gateway_config):
    link = LinkConfig("pbx-main", "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port}", timezone="UTC")
    gateway = await started(gateway_config(links=(link,)))
    health = gateway.links["pbx-main"]

    # First connection: NULs, a garbage line and a 6,000-byte line before real records, which are split across writes.
    _, pbx = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
    stream = (
        b"\x00\x00\x00"
        + b"this is not SMDR\r\n"
        + b"Z" * 6000
        + b"\r\n"
        + IPO_LOST
        + b"\r\n"
        + IPO_TRANSFER_1
        + b"\r\n"
    )
    for cut in range(0, len(stream), 777):
        pbx.write(stream[cut : cut + 777])
        await pbx.drain()
    pbx.close()
    # Second connection (IP Office send mode reconnects): the transfer's last part, a SIP caller with markup, 35 fields.
    _, pbx = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
    pbx.write(IPO_TRANSFER_2 + b"\r\n" + IPO_SIP_30 + b"\r\n" + IPO_OUT_35 + b"\r\n")
    await pbx.drain()
    pbx.close()

    await eventually(lambda: health.records >= 5)
    assert health.errors == 2  # the garbage line and the over-long line: counted, not fatal
    assert health.state.value == "up"

    lost = await call_info(gateway, platformCallID="1000014155")
    assert (lost.find("extension").text, lost.find("direction").text) == ("4324", "in")
    assert lost.find("source_caller_id").text == "8004206" and lost.find("link").text == "pbx-main"
    assert lost.find("start_time").text == "2008-06-28T09:28:41+00:00"

    transfer = await call_info(gateway, platformCallID="1000014160")
    assert transfer.get("state") == "1" and transfer.find("source_caller_id").text == "01707392200"
    for extension in ("4750", "4751"):  # one call, findable by every party
        root = await api(gateway, action="GetCallID", extension=extension, status="last")
        assert root.find("CallID").text == transfer.find("ccdr_id").text

    sip = await call_info(gateway, platformCallID="1000020001")
    assert sip.find("source_caller_id").text == "12345" and sip.find("extension").text == "4400"
    out = await call_info(gateway, platformCallID="1000020002")
    assert (out.find("direction").text, out.find("destination_caller_id").text) == ("out", "0044207946000")

    async with aiohttp.ClientSession() as session:
        for response_type in ("XML", "JSON", "HTML", "TEXT"):
            params = {
                "apiKey": API_KEY,
                "action": "GetCallInformation",
                "platformCallID": "1000020001",
                "responseType": response_type,
            }
            async with session.get(f"{gateway.url}/verba/api", params=params) as response:
                assert "<b>" not in await response.text()
        async with session.get(f"{gateway.url}/healthz") as response:
            report = await response.json()
    assert report["links"]["pbx-main"]["errors"] == 2 and report["links"]["pbx-main"]["records"] >= 5

    # Everything read was journalled, the garbage too, with its reason in quarantine.
    journal = await gateway.store.journal_entries("pbx-main")
    assert len(journal) == 7
    reasons = [entry.reason for entry in reversed(await gateway.store.quarantined_page("pbx-main"))]
    assert len(reasons) == 2 and any("4096" in reason for reason in reasons)


async def test_record_completes_the_live_recorder_call(tmp_path, started, sim, unused_tcp_port, gateway_config):
    link = LinkConfig("pbx-main", "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port}", timezone="UTC")
    config = gateway_config(
        links=(link,),
        extensions=(ExtensionConfig("4750", RecordingMode.FULL, "trunk1", "1/5"),),
        recorders=(RecorderConfig("trunk1", f"tcp://127.0.0.1:{sim.port}", 1.0),),
    )
    gateway = await started(config)
    await gateway.recorder_clients[0].wait_ready(WAIT_S)
    live = sim.place_call("1/5", calling="01707392200", called="4750")
    sim.answer("1/5")
    await eventually(lambda: gateway.tracker.ongoing_count == 1)
    sim.release("1/5")
    await eventually(lambda: gateway.tracker.ongoing_count == 0)
    live_call = await gateway.tracker.find_by_native_id(live.call_id)
    start = live_call.start_time.strftime("%Y/%m/%d %H:%M:%S")
    record = f"{start},00:00:10,2,01707392200,I,4750,4750,42,0,1000099001,0,E4750,John,T9002,LINE 1.2,0,0\r\n"
    _, pbx = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
    pbx.write(record.encode())
    await pbx.drain()
    pbx.close()
    await eventually(lambda: gateway.links["pbx-main"].records == 1)
    cdr = await call_info(gateway, platformCallID="1000099001")
    assert cdr.find("ccdr_id").text == live_call.call_id  # the same call, not a second one
    assert cdr.find("native_id").text == live.call_id and cdr.find("link").text == "pbx-main"
    assert gateway.tracker.new_call_count == 1


PANASONIC_PAGE = (
    b"  Date     Time    Ext CO        Dial Number        Ring Duration  Acc code  CD \r"
    b"--------------------------------------------------------------------------------\r"
    b"\r"
    b"06/24/97 10:07AM 13 2 <I> 00:00'56\r"
    b"06/24/97 10:20AM 12 3 <I>4312111 00:21'46\r"
    b"\r\r"
    b"06/24/97 10:03AM 11 1 1234567890123456789012345 00:05'12 1234567890\r"
)


async def test_panasonic_over_a_serial_pty(tmp_path, started, gateway_config):
    master, slave = os.openpty()
    tty.setraw(master)
    link = LinkConfig("pana", "panasonic", os.ttyname(slave), timezone="UTC")
    try:
        gateway = await started(gateway_config(links=(link,)))
        await eventually(lambda: gateway.links["pana"].state.value == "up")
        os.write(master, PANASONIC_PAGE)
        await eventually(lambda: gateway.links["pana"].records == 3)
        assert gateway.links["pana"].errors == 0
        root = await api(gateway, action="GetCallID", extension="12", status="last")
        call_id = root.find("CallID").text
        cdr = await call_info(gateway, callID=call_id)
        assert cdr.find("direction").text == "in" and cdr.find("source_caller_id").text == "4312111"
        assert cdr.find("end_time").text == "1997-06-24T10:20:00+00:00"
        assert cdr.find("duration").text == str(21 * 60 + 46)
    finally:
        os.close(master)
        os.close(slave)


MITEL_LINES = [
    b" 03/05 13:14:13             9999         9999999999           00000                                        001   98029                                   C0099410 A                                            ",
    b"-03/05 13:38:35  0000:06:59 9999         9999999999           00000A                                       001   88029                                   A0099648 A                                            ",
]


async def test_mitel_extended_records_over_tcp(tmp_path, started, unused_tcp_port, gateway_config):
    served = asyncio.Event()

    async def pbx(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\r\n".join(MITEL_LINES) + b"\r\n")
        await writer.drain()
        served.set()
        await reader.read()  # hold the line open like a PBX would
        writer.close()

    server = await asyncio.start_server(pbx, "127.0.0.1", unused_tcp_port)
    try:
        link = LinkConfig("mitel", "mitel-mivb", f"tcp://127.0.0.1:{unused_tcp_port}", timezone="UTC")
        gateway = await started(gateway_config(links=(link,)))
        await asyncio.wait_for(served.wait(), WAIT_S)
        await eventually(lambda: gateway.links["mitel"].records == 2)
        assert gateway.links["mitel"].errors == 0
        root = await api(gateway, action="GetCallID", extension="9999", status="last")
        cdr = await call_info(gateway, callID=root.find("CallID").text)
        assert cdr.find("duration").text == str(6 * 60 + 59)
        assert cdr.find("start_time").text.endswith("T13:38:35+00:00")
    finally:
        server.close()
        await server.wait_closed()
