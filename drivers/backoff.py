"""Reconnect delays for every link the gateway opens (PBX tcp:// and serial links, trunk recorders)."""

from __future__ import annotations

import errno

# Delays double from 0.1 s to 30 s: a device that is down is not hammered, a blip is retried at once.
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 30.0
# A connect that is refused at once (the host answers but nothing listens yet: a PBX or recorder restarting), or
# a serial port that does not exist yet (a USB adapter re-plugged, a pty re-created), costs one packet or one
# syscall to try again: those are retried at most this far apart, so a link is up within a second of its
# peer's return — the connect, the login and /healthz noticing included (at 1.0 s the soak measured up to
# 1,001 ms). A connect that times out (host down, cable pulled) keeps the doubling delays.
CHEAP_RETRY_MAX_S = 0.5
_CHEAP_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO})


def is_cheap_to_retry(error: BaseException | None) -> bool:
    """The peer answered "not now" at once, rather than not at all."""
    if isinstance(error, (ConnectionRefusedError, FileNotFoundError)):
        return True
    if isinstance(error, OSError) and error.errno in _CHEAP_ERRNOS:
        return True
    # serial.SerialException wraps the OSError of the open (pyserial sets neither errno nor a subclass).
    cause = error.__cause__ or error.__context__ if error is not None else None
    return cause is not error and cause is not None and is_cheap_to_retry(cause)


class Backoff:
    """The delay before the next attempt: `next_delay(error)` after each failure or lost connection, `reset()`
    after a connection that proved good."""

    def __init__(
        self,
        initial_s: float = BACKOFF_INITIAL_S,
        max_s: float = BACKOFF_MAX_S,
        cheap_retry_max_s: float = CHEAP_RETRY_MAX_S,
    ) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._cheap_retry_max_s = cheap_retry_max_s
        self._next_s = initial_s

    @property
    def upcoming_s(self) -> float:
        """The delay the next failure will get (for log lines), before the cheap-retry cap."""
        return self._next_s

    def next_delay(self, error: BaseException | None = None) -> float:
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        if is_cheap_to_retry(error):
            return min(delay, self._cheap_retry_max_s)
        return delay

    def reset(self) -> None:
        self._next_s = self._initial_s
