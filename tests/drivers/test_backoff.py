"""Reconnect delays: doubling to a cap, and at most a second between attempts a peer refuses at once."""

from __future__ import annotations

import errno

import serial

from drivers.backoff import CHEAP_RETRY_MAX_S, Backoff, is_cheap_to_retry


def test_delays_double_up_to_the_cap_and_reset() -> None:
    backoff = Backoff(0.1, 1.6)
    assert [backoff.next_delay(TimeoutError()) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.6, 1.6]
    backoff.reset()
    assert backoff.next_delay(TimeoutError()) == 0.1


def test_a_refused_connect_is_retried_within_a_second_however_long_the_outage() -> None:
    backoff = Backoff(0.1, 30.0)
    for _ in range(12):
        assert backoff.next_delay(ConnectionRefusedError()) <= CHEAP_RETRY_MAX_S
    assert backoff.upcoming_s == 30.0  # a connect that then times out waits the long delay again
    assert backoff.next_delay(TimeoutError()) == 30.0


def test_what_counts_as_a_peer_saying_not_now() -> None:
    assert is_cheap_to_retry(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert is_cheap_to_retry(FileNotFoundError(errno.ENOENT, "no such device"))
    wrapped = serial.SerialException("could not open port /dev/ttyUSB0")
    wrapped.__cause__ = FileNotFoundError(errno.ENOENT, "No such file or directory")
    assert is_cheap_to_retry(wrapped)
    assert not is_cheap_to_retry(TimeoutError())
    assert not is_cheap_to_retry(OSError(errno.EHOSTUNREACH, "no route to host"))
    assert not is_cheap_to_retry(None)
