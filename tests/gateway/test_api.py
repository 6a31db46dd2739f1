"""The HTTP API end to end: a real Gateway on loopback, spoken to over HTTP (docs/api.md §1–§6)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from gateway.config import (
    ApiConfig,
    ApiKeyConfig,
    ExtensionConfig,
    GatewayConfig,
    HttpConfig,
    LinkConfig,
    RecorderConfig,
    StoreConfig,
    UserConfig,
)
from gateway.events import CallConnected, CallEnded, CallRecord, CallStarted, RecordingStarted
from gateway.model import Direction, RecordingMode
from gateway.passwords import hash_password
from gateway.service import Gateway

OPEN_KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
SECURE_KEY = "0b6f5a52-8a0e-4a57-9d0e-6f2a3c1d9e41"
OTHER_SECURE_KEY = "5d0c7e1a-2b3f-4c5d-8e9f-0a1b2c3d4e5f"
FENCED_KEY = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
PASSWORD = "s3cret-Pa55"
T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
async def gateway(tmp_path, unused_tcp_port_factory):
    password_hash = hash_password(PASSWORD, n=2**4)  # cheap parameters: tests check logic, not scrypt
    config = GatewayConfig(
        source=tmp_path / "test.yaml",
        http=HttpConfig(host="127.0.0.1", port=0),
        store=StoreConfig(tmp_path / "gateway.db"),
        api=ApiConfig(
            token_ttl_s=3600,
            next_window_s=5.0,
            keys=(
                ApiKeyConfig(OPEN_KEY, "crm"),
                ApiKeyConfig(SECURE_KEY, "secure", require_token=True),
                ApiKeyConfig(OTHER_SECURE_KEY, "other", require_token=True),
                ApiKeyConfig(FENCED_KEY, "fenced", networks=(ipaddress.ip_network("10.0.0.0/8"),)),
            ),
            users=(
                UserConfig("apiuser", password_hash, "Europe/Budapest"),
                UserConfig("other", password_hash),
            ),
        ),
        extensions=(
            ExtensionConfig("8856", RecordingMode.CONTROLLED, "trunk1", "1/5"),
            ExtensionConfig("8857", RecordingMode.FULL, "trunk1", "1/6"),
            ExtensionConfig("8858", RecordingMode.ON_DEMAND, "trunk1", "1/7"),
        ),
        links=(LinkConfig("pbx-main", "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port_factory()}"),),
        recorders=(
            RecorderConfig("trunk1", f"tcp://127.0.0.1:{unused_tcp_port_factory()}"),
        ),  # no device: not connected
    )
    gateway = Gateway(config)
    await gateway.start()
    yield gateway
    await gateway.stop()


@pytest.fixture
async def http(gateway):
    async with aiohttp.ClientSession(base_url=gateway.url) as session:
        yield session


async def api(http, method="GET", **params):
    """Send a request; returns (HTTP status, body text)."""
    headers = params.pop("headers", None)
    query = {name: value for name, value in params.items() if value is not None}
    if method == "GET":
        request = http.get("/verba/api", params=query, headers=headers)
    else:
        request = http.post("/verba/api", data=query, headers=headers)
    async with request as response:
        return response.status, await response.text()


def xml_code(body: str) -> tuple[int, ET.Element]:
    root = ET.fromstring(body.encode())
    assert root.tag == "VerbaApi"
    return int(root.find("Response").get("code")), root


def start_call(gateway, native_id="TRS1", channel="1/5", calling="01707392200", called="8856", at=None):
    return gateway.submit(CallStarted("trunk1", channel, native_id, calling, called, Direction.IN, at or T0))


async def request_token(http, key=SECURE_KEY, user="apiuser", password=PASSWORD):
    status, body = await api(http, action="RequestToken", apiKey=key, userName=user, password=password)
    assert status == 200, body
    return xml_code(body)[1].find("Response").get("token")


# ---- envelopes


async def test_get_call_id_exact_xml_envelope(gateway, http):
    call = start_call(gateway)
    status, body = await api(http, action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="ongoing")
    assert status == 200
    assert body == (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<VerbaApi>\n"
        '<Response code="0" type="GetCallID"/>\n'
        f"<CallID>{call.call_id}</CallID>\n"
        "</VerbaApi>\n"
    )


async def test_not_found_exact_xml_error_envelope(http):
    status, body = await api(http, action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="ongoing")
    assert status == 200
    assert body == (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<VerbaApi>\n"
        '<Response code="2" type="GetCallID">\n'
        "<ErrorMessage>Unable to retrieve the call identifier, because the call cannot be found.</ErrorMessage>\n"
        "</Response>\n"
        "</VerbaApi>\n"
    )


async def test_json_text_and_html_forms(gateway, http):
    call = start_call(gateway)
    common = dict(action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="ongoing")
    status, body = await api(http, responseType="json", **common)
    assert status == 200 and json.loads(body) == {"code": 0, "type": "GetCallID", "callID": call.call_id}
    status, body = await api(http, responseType="TEXT", **common)
    assert body.strip() == call.call_id
    status, body = await api(http, responseType="Html", **common)
    assert body.startswith("<!DOCTYPE html>") and call.call_id in body
    status, body = await api(http, responseType="JSON", **{**common, "extension": "1111"})
    assert json.loads(body)["code"] == 2 and "cannot be found" in json.loads(body)["error"]
    status, body = await api(http, responseType="TEXT", **{**common, "extension": "1111"})
    assert body.startswith("ERROR: ") and body.count("\n") <= 1


async def test_post_form_and_query_both_work(gateway, http):
    call = start_call(gateway)
    status, body = await api(http, "POST", action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="ongoing")
    assert status == 200 and call.call_id in body
    async with http.post(
        "/verba/api",
        params={"action": "GetCallID", "apiKey": OPEN_KEY},
        data={"extension": "8856", "status": "ongoing"},
    ) as response:
        assert call.call_id in await response.text()


async def test_url_of_8_kib_is_served(gateway, http):
    call = start_call(gateway)
    padding = "x" * (8 * 1024 - 200)
    status, body = await api(
        http, action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="ongoing", ignored=padding
    )
    assert status == 200 and call.call_id in body


# ---- HTTP status codes and parameter errors


@pytest.mark.parametrize(
    "params",
    [
        dict(action="GetCallID", apiKey=OPEN_KEY, extension="8856"),  # missing status
        dict(action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="soon"),  # invalid status
        dict(action="Explode", apiKey=OPEN_KEY),  # unknown action
        dict(apiKey=OPEN_KEY),  # missing action
        dict(action="KeepCall", apiKey=OPEN_KEY),  # neither callID nor extension
        dict(action="KeepCall", apiKey=OPEN_KEY, callID="not-a-guid"),
        dict(action="GetCallID", apiKey=OPEN_KEY),  # no lookup
        dict(action="GetCallID", apiKey=OPEN_KEY, nativeID="a", platformCallID="b"),  # two lookups
        dict(action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="last", responseType="YAML"),
        dict(action="KeepCall", apiKey=OPEN_KEY, extension="8856", status="last", type="shred"),
    ],
)
async def test_bad_requests_are_400_with_code_2(http, params):
    status, body = await api(http, **params)
    assert status == 400
    code, root = xml_code(body)
    assert code == 2 and root.find("Response/ErrorMessage").text


@pytest.mark.parametrize(
    "params",
    [
        dict(action="GetCallID", extension="8856", status="last"),  # missing key
        dict(action="GetCallID", apiKey="00000000-0000-0000-0000-000000000000", extension="8856", status="last"),
        dict(action="GetCallID", apiKey=SECURE_KEY, extension="8856", status="last"),  # token required
        dict(action="GetCallID", apiKey=SECURE_KEY, token="forged", extension="8856", status="last"),
        dict(action="RequestToken", apiKey=SECURE_KEY, userName="apiuser", password="wrong"),
        dict(action="RequestToken", apiKey=SECURE_KEY, userName="nobody", password=PASSWORD),
        dict(action="RequestToken", apiKey=SECURE_KEY),
    ],
)
async def test_authentication_failures_are_401_with_code_2(http, params):
    status, body = await api(http, **params)
    assert status == 401
    assert xml_code(body)[0] == 2


async def test_key_fenced_to_other_networks_is_403(http):
    status, body = await api(http, action="GetCallID", apiKey=FENCED_KEY, extension="8856", status="last")
    assert status == 403 and xml_code(body)[0] == 2


async def test_tokens_from_both_request_forms_and_both_token_forms(gateway, http):
    call = start_call(gateway, called="8856")
    token = await request_token(http)
    assert len(token) >= 22
    basic = base64.b64encode(f"apiuser:{PASSWORD}".encode()).decode()
    status, body = await api(
        http, action="RequestToken", apiKey=SECURE_KEY, responseType="TEXT", headers={"Authorization": f"Basic {basic}"}
    )
    assert status == 200
    header_token = body.strip()
    assert header_token != token
    lookup = dict(action="GetCallID", apiKey=SECURE_KEY, extension="8856", status="ongoing")
    status, body = await api(http, token=token, **lookup)
    assert status == 200 and call.call_id in body
    status, body = await api(http, headers={"Authorization": f"Bearer {header_token}"}, **lookup)
    assert status == 200 and call.call_id in body


async def test_token_is_bound_to_its_key_and_cannot_be_tampered(http):
    token = await request_token(http)
    lookup = dict(action="GetCallID", extension="8856", status="ongoing")
    status, _ = await api(http, apiKey=OTHER_SECURE_KEY, token=token, **lookup)
    assert status == 401
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    status, _ = await api(http, apiKey=SECURE_KEY, token=tampered, **lookup)
    assert status == 401


# ---- lookups


async def test_next_waits_for_the_call_start_while_other_requests_are_served(gateway, http):
    waiting = asyncio.create_task(
        api(http, action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="ongoing,next")
    )
    while gateway.tracker.next_waiter_count == 0:
        await asyncio.sleep(0.005)
    status, body = await api(http, action="GetCallID", apiKey=OPEN_KEY, extension="8857", status="last")
    assert status == 200 and xml_code(body)[0] == 2  # served meanwhile
    assert not waiting.done()
    call = start_call(gateway)
    status, body = await asyncio.wait_for(waiting, 1.0)
    assert status == 200 and call.call_id in body


async def test_a_client_that_disconnects_cancels_its_next_wait(gateway):
    async with aiohttp.ClientSession(base_url=gateway.url) as session:
        request = asyncio.create_task(
            session.get("/verba/api", params=dict(action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="next"))
        )
        while gateway.tracker.next_waiter_count == 0:
            await asyncio.sleep(0.005)
        request.cancel()
    for _ in range(200):
        if gateway.tracker.next_waiter_count == 0:
            break
        await asyncio.sleep(0.01)
    assert gateway.tracker.next_waiter_count == 0


async def test_more_than_one_ongoing_call_is_refused(gateway, http):
    start_call(gateway, "TRS1")
    start_call(gateway, "TRS2", channel="1/9")
    status, body = await api(http, action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="ongoing")
    assert status == 200
    assert "more than one call" in xml_code(body)[1].find("Response/ErrorMessage").text


async def test_lookup_by_platform_and_native_id(gateway, http):
    live = start_call(gateway, "TRS26140192")
    record = gateway.submit(
        CallRecord(
            format="avaya-ipo",
            source="pbx-main",
            raw="",
            received_at=T0,
            start=T0 - timedelta(hours=1),
            duration_s=10,
            extension="4324",
            other_number="8004206",
            direction=Direction.IN,
            platform_call_id="71627389",
        )
    )
    for params, expected in ((dict(nativeID="TRS26140192"), live), (dict(platformCallID="71627389"), record)):
        status, body = await api(http, action="GetCallID", apiKey=OPEN_KEY, **params)
        assert status == 200 and xml_code(body)[1].find("CallID").text == expected.call_id


# ---- KeepCall


async def test_keep_call_marks_and_unmarks(gateway, http):
    call = start_call(gateway, "TRS1", channel="1/7", called="8858")
    gateway.submit(RecordingStarted("trunk1", "1/7", "R1", "TRS1", T0))
    status, body = await api(http, action="KeepCall", apiKey=OPEN_KEY, callID=call.call_id)
    assert (status, body) == (
        200,
        '<?xml version="1.0" encoding="UTF-8"?>\n<VerbaApi>\n<Response code="0" type="KeepCall"/>\n</VerbaApi>\n',
    )
    assert (await gateway.store.get_call(call.call_id)).kept  # committed before the answer
    status, body = await api(http, action="KeepCall", apiKey=OPEN_KEY, cid=call.call_id, unmark="1")
    assert status == 200 and not (await gateway.store.get_call(call.call_id)).kept


async def test_keep_call_do_not_delete_by_extension(gateway, http):
    call = start_call(gateway)
    status, body = await api(
        http,
        action="KeepCall",
        apiKey=OPEN_KEY,
        extension="8856",
        status="ongoing",
        type="DO_NOT_DELETE",
        responseType="TEXT",
    )
    assert (status, body.strip()) == (200, "OK")
    assert (await gateway.store.get_call(call.call_id)).do_not_delete


async def test_keep_unrecorded_call_is_an_error(gateway, http):
    call = start_call(gateway, "TRS1", channel="1/7", called="8858")
    status, body = await api(http, action="KeepCall", apiKey=OPEN_KEY, callID=call.call_id)
    assert status == 200 and xml_code(body)[0] == 2


async def test_manual_record_without_a_connected_recorder_is_503(gateway, http):
    start_call(gateway)
    status, body = await api(
        http, action="KeepCall", apiKey=OPEN_KEY, extension="8856", status="ongoing", type="manualRecord"
    )
    assert status == 503 and xml_code(body)[0] == 2


async def test_manual_record_off_controlled_is_refused(gateway, http):
    start_call(gateway, "TRS1", channel="1/6", called="8857")
    status, body = await api(
        http, action="KeepCall", apiKey=OPEN_KEY, extension="8857", status="ongoing", type="manualRecord"
    )
    assert status == 200 and xml_code(body)[0] == 2


async def test_manual_record_lookup_without_recording_is_not_found(gateway, http):
    start_call(gateway)
    status, body = await api(
        http, action="GetCallID", apiKey=OPEN_KEY, extension="8856", status="ongoing", type="manualRecord"
    )
    assert status == 200 and xml_code(body)[0] == 2


# ---- GetCallInformation and escaping


async def test_call_information_in_user_time_zone(gateway, http):
    call = start_call(gateway)
    gateway.submit(CallConnected("trunk1", "1/5", "TRS1", T0 + timedelta(seconds=4)))
    gateway.submit(CallEnded("trunk1", "1/5", "TRS1", T0 + timedelta(seconds=64)))
    status, body = await api(http, action="GetCallInformation", apiKey=OPEN_KEY, callID=call.call_id)
    code, root = xml_code(body)
    cdr = root.find("verbacdr")
    assert code == 0 and cdr.get("state") == "1"
    assert cdr.find("ccdr_id").text == call.call_id
    assert cdr.find("native_id").text == "TRS1"
    assert cdr.find("direction").text == "in"
    assert cdr.find("start_time").text == "2026-11-23T10:00:00+00:00"
    assert cdr.find("duration").text == "60"
    assert cdr.find("recording_mode").text == "controlled"
    assert [child.tag for child in cdr][:18] == [
        "ccdr_id",
        "native_id",
        "platform_call_id",
        "source_caller_id",
        "destination_caller_id",
        "extension",
        "direction",
        "start_time",
        "connect_time",
        "end_time",
        "duration",
        "recording_mode",
        "ondemand",
        "kept",
        "manual",
        "do_not_delete",
        "recorded",
        "link",
    ]
    token = await request_token(http)
    status, body = await api(http, action="GetCallInformation", apiKey=SECURE_KEY, token=token, callID=call.call_id)
    assert xml_code(body)[1].find("verbacdr/start_time").text == "2026-11-23T11:00:00+01:00"


@pytest.mark.parametrize("response_type", ["XML", "JSON", "HTML", "TEXT"])
async def test_no_markup_from_outside_in_any_response(gateway, http, response_type):
    call = gateway.submit(
        CallRecord(
            format="avaya-ipo",
            source="pbx-main",
            raw="",
            received_at=T0,
            start=T0,
            duration_s=3,
            extension="4324",
            other_number=HOSTILE,
            direction=Direction.IN,
            platform_call_id="1",
            account='"><b>x</b>',
        )
    )
    for params in (
        dict(action="GetCallInformation", callID=call.call_id),
        dict(action="GetCallID", extension=HOSTILE, status="last"),
        dict(action="GetCallID", extension="8856", status=HOSTILE),
        dict(action=HOSTILE),
        dict(action="GetCallID", extension="8856", status="last", type=HOSTILE),
    ):
        status, body = await api(http, apiKey=OPEN_KEY, responseType=response_type, **params)
        assert "<script>" not in body and "<b>" not in body, (params, body)
    if response_type == "XML":
        status, body = await api(http, action="GetCallInformation", apiKey=OPEN_KEY, callID=call.call_id)
        assert xml_code(body)[1].find("verbacdr/source_caller_id").text == HOSTILE


async def test_healthz_reports_links_recorders_and_calls(gateway, http):
    start_call(gateway)
    async with http.get("/healthz") as response:
        assert response.status == 503  # degraded: the recorder is down
        report = await response.json()
    assert report == {
        "status": "degraded",
        "links": {
            "pbx-main": {
                "state": "up",
                "records": 0,
                "errors": 0,
                "replayed": 0,
                "last_record_at": None,
                "reconnects": 0,
            }
        },  # listening
        "recorders": {"trunk1": {"state": "down"}},
        "calls": {"ongoing": 1, "stored": 1},
        "store": {"backend": "sqlite", "state": "ok", "error": None},
        "retention": {  # no pass yet: the first waits a minute after start-up
            "runs": 0,
            "last_run_at": None,
            "last_run_s": None,
            "last_pruned": {"calls": 0, "journal": 0, "quarantine": 0, "events": 0, "tokens": 0},
            "pruned_total": {"calls": 0, "journal": 0, "quarantine": 0, "events": 0, "tokens": 0},
            "pages_released": 0,
            "auto_vacuum": None,
            "errors": 0,
            "last_error": None,
            "last_error_at": None,
        },
    }
