"""The authentication matrix over HTTP, one parametrised test: key kinds × networks × token states
× the forms a token or credentials take, each with its expected HTTP status and result code."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import itertools
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import pytest_asyncio

from gateway.api import auth
from gateway.config import ApiKeyConfig
from gateway.service import Gateway
from tests.gateway.hostile_http import (
    HOSTILE_PASSWORD,
    HOSTILE_USER,
    hostile_config,
    raw_exchange,
    raw_request,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN_TTL_S = 1  # the shortest the configuration allows: tokens issued at set-up have expired by the first test
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1"))
ELSEWHERE = (ipaddress.ip_network("10.0.0.0/8"),)
NETWORKS = {"any": None, "loopback": LOOPBACK, "elsewhere": ELSEWHERE}
KEYS = {
    (require_token, network): ApiKeyConfig(
        f"{index:08x}-0000-4000-8000-000000000000",
        f"key-{index}",
        require_token=require_token,
        networks=NETWORKS[network],
    )
    for index, (require_token, network) in enumerate(itertools.product((False, True), NETWORKS), start=1)
}
OTHER_KEY = ApiKeyConfig("ffffffff-0000-4000-8000-000000000000", "other", require_token=True)

TOKEN_STATES = ("none", "valid", "expired", "tampered", "other key's")
TOKEN_FORMS = ("parameter", "Bearer")
CREDENTIAL_FORMS = ("parameters", "Basic")


def _credentials(form: str, password: str) -> tuple[dict[str, str], dict[str, str]]:
    """(parameters, headers) carrying user name and password in `form`."""
    if form == "Basic":
        encoded = base64.b64encode(f"{HOSTILE_USER}:{password}".encode()).decode()
        return {}, {"Authorization": f"Basic {encoded}"}
    return {"userName": HOSTILE_USER, "password": password}, {}


async def _call(port: int, params: dict[str, str], headers: dict[str, str]) -> tuple[int, int, str | None, ET.Element]:
    response = await raw_exchange(port, raw_request("GET", "/verba/api?" + urlencode(params), headers=headers))
    root = ET.fromstring(response.body)
    message = root.find("Response/ErrorMessage")
    return response.status, int(root.find("Response").get("code")), message.text if message is not None else None, root


async def _token(port: int, key: ApiKeyConfig, credential_form: str = "parameters") -> str:
    params, headers = _credentials(credential_form, HOSTILE_PASSWORD)
    status, code, _, root = await _call(port, {"action": "RequestToken", "apiKey": key.key, **params}, headers)
    assert (status, code) == (200, 0)
    return root.find("Response").get("token")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def matrix(tmp_path_factory) -> AsyncIterator[tuple[Gateway, dict[tuple[str, str], str]]]:
    config = hostile_config(
        tmp_path_factory.mktemp("matrix"), token_ttl_s=TOKEN_TTL_S, keys=(*KEYS.values(), OTHER_KEY)
    )
    # One executor thread for the whole module, started here: a pool free to add a second worker would do so in
    # whichever test raced its idle check, and the leftover-thread guard would blame that test.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
    gateway = Gateway(config)
    await gateway.start()
    usable = [key for key in KEYS.values() if key.networks is not ELSEWHERE]
    # One per key and form: the first use of an expired token also forgets it ("Invalid token" after).
    expired = {(key.key, form): await _token(gateway.port, key) for key in usable for form in TOKEN_FORMS}
    await asyncio.sleep(TOKEN_TTL_S + 0.1)  # the TTL passing is the condition; its clock is the gateway's own
    yield gateway, expired
    await gateway.stop()


def _expected_lookup(require_token: bool, network: str, state: str) -> tuple[int, int, str | None]:
    if network == "elsewhere":
        return 403, 2, auth.NETWORK_NOT_ALLOWED
    if state == "none":
        return (401, 2, auth.MISSING_TOKEN) if require_token else (200, 2, None)
    return {
        "valid": (200, 2, None),  # authorised; the extension has no call: "cannot be found"
        "expired": (401, 2, auth.EXPIRED_TOKEN),
        "tampered": (401, 2, auth.INVALID_TOKEN),
        "other key's": (401, 2, auth.TOKEN_WRONG_KEY),
    }[state]


LOOKUP_CASES = [
    (require_token, network, state, token_form, credential_form)
    for (require_token, network) in KEYS
    for state in TOKEN_STATES
    for token_form in (("-",) if state == "none" else TOKEN_FORMS)
    for credential_form in (CREDENTIAL_FORMS if state == "valid" else ("parameters",))
]


@pytest.mark.parametrize(("require_token", "network", "state", "token_form", "credential_form"), LOOKUP_CASES)
async def test_lookup_authentication_matrix(matrix, require_token, network, state, token_form, credential_form):
    gateway, expired = matrix
    key = KEYS[(require_token, network)]
    issuing_key = (
        key if network != "elsewhere" else KEYS[(require_token, "any")]
    )  # a token exists; the network still refuses
    token = None
    if state == "valid":
        token = await _token(gateway.port, issuing_key, credential_form)
    elif state == "expired":
        token = expired[(issuing_key.key, token_form)]
    elif state == "tampered":
        fresh = await _token(gateway.port, issuing_key)
        token = fresh[:-1] + ("A" if fresh[-1] != "A" else "B")
    elif state == "other key's":
        token = await _token(gateway.port, OTHER_KEY)
    params = {"action": "GetCallID", "apiKey": key.key, "extension": "8856", "status": "last"}
    headers = {}
    if token is not None and token_form == "parameter":
        params["token"] = token
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, code, message, _ = await _call(gateway.port, params, headers)
    expected_status, expected_code, expected_message = _expected_lookup(require_token, network, state)
    assert (status, code) == (expected_status, expected_code)
    if expected_message is not None:
        assert message == expected_message
    else:
        assert "cannot be found" in message


@pytest.mark.parametrize(("require_token", "network"), list(KEYS))
@pytest.mark.parametrize("credential_form", CREDENTIAL_FORMS)
@pytest.mark.parametrize("password", ["right", "wrong", "none"])
async def test_request_token_authentication_matrix(matrix, require_token, network, credential_form, password):
    gateway, _ = matrix
    key = KEYS[(require_token, network)]
    params: dict[str, str] = {"action": "RequestToken", "apiKey": key.key}
    headers: dict[str, str] = {}
    if password != "none":
        extra, headers = _credentials(
            credential_form, HOSTILE_PASSWORD if password == "right" else "not-" + HOSTILE_PASSWORD
        )
        params.update(extra)
    status, code, message, root = await _call(gateway.port, params, headers)
    if network == "elsewhere":
        assert (status, code, message) == (403, 2, auth.NETWORK_NOT_ALLOWED)
    elif password == "right":
        assert (status, code) == (200, 0) and len(root.find("Response").get("token")) >= 22
    elif password == "wrong":
        assert (status, code, message) == (401, 2, auth.INVALID_CREDENTIALS)
    else:
        assert (status, code, message) == (401, 2, auth.MISSING_CREDENTIALS)
