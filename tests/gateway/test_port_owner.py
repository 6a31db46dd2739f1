"""Who holds a local TCP port: the bind probe and the /proc lookup behind `gateway tap`'s "port taken" lines."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from gateway.port_owner import PortOwner, listening_owner, port_in_use


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_listening_port_is_in_use_and_names_this_process() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        owner = listening_owner(port)
        assert owner is not None and owner.pid == os.getpid() and not owner.is_gateway
    assert not port_in_use("127.0.0.1", port)
    assert listening_owner(port) is None


def test_a_gateway_is_named_by_its_subcommand_only() -> None:
    assert PortOwner(42, "gateway run").is_gateway
    assert str(PortOwner(42, "gateway run")) == "process 42 (gateway run)"
