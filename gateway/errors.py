"""The gateway's one exception tree: every error the product raises on purpose derives from GatewayError."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every deliberate gateway error."""


class ConfigError(GatewayError):
    """The configuration file is unusable; the message names file, line and key."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, key: str | None = None):
        self.file = file
        self.line = line
        self.key = key
        self.reason = message
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        prefix = f"{key}: " if key else ""
        super().__init__(f"{where}{prefix}{message}")


class StoreError(GatewayError):
    """The durable store could not complete an operation."""


class ClusterUnavailable(StoreError):
    """The cluster's PostgreSQL database cannot be reached (or is failing over): what needs it answers 503, while
    this gateway's own links and recorders carry on from its local store."""


class NodeUnavailable(GatewayError):
    """The cluster node that owns a call is not running (its lock is gone or its heartbeat is stale)."""

    def __init__(self, node: str):
        self.node = node
        super().__init__(f"gateway {node} is not running")


class LinkError(GatewayError):
    """A PBX link (SMDR/CDR tap) failed; retryable by reconnecting."""


class RecorderError(GatewayError):
    """A recorder refused or failed a request.

    `code` is the TRUNKREC/1 error code (NOCALL, ALREADY, …) when the device answered ERR,
    or one of the gateway's own codes below when it did not answer at all.
    """

    NOT_CONNECTED = "NOTCONNECTED"
    TIMEOUT = "TIMEOUT"

    def __init__(self, code: str, text: str = ""):
        self.code = code
        self.text = text
        super().__init__(f"{code} {text}".strip())


class RecorderNotConnected(RecorderError):
    def __init__(self, recorder: str):
        super().__init__(RecorderError.NOT_CONNECTED, f"recorder {recorder} is not connected")


class RecorderTimeout(RecorderError):
    def __init__(self, recorder: str, timeout_s: float):
        super().__init__(RecorderError.TIMEOUT, f"recorder {recorder} did not answer within {timeout_s:g} s")


class LookupFailed(GatewayError):
    """A call lookup found nothing, or more than one call (never a guess)."""


class CallNotFound(LookupFailed):
    pass


class AmbiguousCall(LookupFailed):
    pass


class ApiError(GatewayError):
    """An API request failed; carries the HTTP status and the message for the envelope."""

    def __init__(self, http_status: int, message: str):
        self.http_status = http_status
        self.message = message
        super().__init__(message)
