"""Reconnecting for every outgoing link (PBX tcp:// and serial links, trunk recorders): one connection at a time,
reopened forever with backoff (drivers/backoff.py), each outage logged once at WARNING and then at DEBUG."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

from drivers.backoff import Backoff
from gateway.errors import GatewayError

# What a connect attempt may fail with in the normal course of things (refused, timed out, port missing, login or
# banner wrong). Anything else is a bug: logged with its traceback, and still retried.
EXPECTED_CONNECT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ValueError, GatewayError)

_Connection = TypeVar("_Connection")


@dataclass(frozen=True, slots=True)
class OutageEvents:
    """The log events of one kind of link (the names are what docs/smdr.md and docs/recorder.md promise)."""

    unreachable: str  # WARNING: the first failed attempt of an outage
    still_unreachable: str  # DEBUG: every further failed attempt
    lost: str  # WARNING: a connection that had proved good has ended: an outage begins
    lost_again: str  # DEBUG: a connection made during an outage ended before it proved good
    failed_unexpectedly: str  # ERROR with traceback: an attempt failed with an unexpected exception


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """How a connection ended. `proved_good`: it carried data or stayed up long enough (a recorder: it reached
    ready) — the backoff starts again from its first delay and the outage, if any, is over."""

    proved_good: bool
    log_fields: Mapping[str, Any] = field(default_factory=dict)  # peer=, reason= for the "lost" line


class Reconnector(Generic[_Connection]):
    """Runs `connect()` then `serve(connection)` for ever. `connect` raises when it cannot connect; `serve`
    returns when the connection is over. Between attempts: the backoff's delay (a peer that refuses at once is
    retried within a second). `in_outage` says whether the link is in an outage now (for the "connected" line)."""

    def __init__(self, log: Any, events: OutageEvents, backoff: Backoff, **log_fields: Any) -> None:
        self._log = log
        self._events = events
        self._backoff = backoff
        self._log_fields = log_fields  # on the WARNING that opens an outage (url=)
        self.in_outage = False

    async def run(
        self,
        connect: Callable[[], Awaitable[_Connection]],
        serve: Callable[[_Connection], Awaitable[SessionEnd]],
    ) -> NoReturn:
        events = self._events
        while True:
            failure: BaseException | None = None
            retry_s = self._backoff.upcoming_s
            try:
                connection = await connect()
            except Exception as error:
                failure = error
                reason = str(error) or type(error).__name__
                if not isinstance(error, EXPECTED_CONNECT_ERRORS):
                    self._log.exception(events.failed_unexpectedly, retry_s=retry_s)
                elif self.in_outage:
                    self._log.debug(events.still_unreachable, error=reason, retry_s=retry_s)
                else:
                    self._log.warning(events.unreachable, **self._log_fields, error=reason, retry_s=retry_s)
                self.in_outage = True
            else:
                try:
                    end = await serve(connection)
                except Exception:  # a bug in the session: the link is reopened all the same
                    self._log.exception(events.failed_unexpectedly, retry_s=retry_s)
                    end = SessionEnd(proved_good=False)
                if end.proved_good:
                    self._backoff.reset()
                    retry_s = self._backoff.upcoming_s
                    self.in_outage = False
                if self.in_outage:
                    self._log.debug(events.lost_again, **end.log_fields, retry_s=retry_s)
                else:
                    self._log.warning(events.lost, **end.log_fields, retry_s=retry_s)
                    self.in_outage = True
            await asyncio.sleep(self._backoff.next_delay(failure))
