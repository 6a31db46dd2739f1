"""What the API answers for each error: the HTTP status and the envelope's message. One table, used by the HTTP
handler and by a cluster node running another node's KeepCall (whose answer must be word for word the same)."""

from __future__ import annotations

from gateway.api.auth import Principal
from gateway.api.verba import (
    ACTION_KEEP_CALL,
    TYPE_KEEP,
    ActionContext,
    ActionRequest,
    keep_call,
    lookup_error_message,
)
from gateway.cluster.commands import Outcome
from gateway.config import ApiKeyConfig
from gateway.errors import (
    ApiError,
    ClusterUnavailable,
    LookupFailed,
    RecorderError,
    RecorderNotConnected,
    RecorderTimeout,
    StoreError,
)
from gateway.recording import KeepRefused

MESSAGE_RECORDER_NOT_CONNECTED = "Unable to control the recording, because the recorder is not connected."
MESSAGE_RECORDER_TIMEOUT = "Unable to control the recording, because the recorder did not answer in time."
MESSAGE_STORE_FAILING = "Unable to store the change, because the gateway's database refuses writes; try again later."
MESSAGE_CLUSTER_UNAVAILABLE = (
    "Unable to answer, because the cluster database cannot be reached; this gateway's own calls are kept meanwhile."
)


def error_outcome(action: str, error: BaseException) -> tuple[int, str] | None:
    """(HTTP status, message) for an error the API answers on purpose; None for anything else (a 500)."""
    if isinstance(error, ApiError):
        return error.http_status, error.message
    if isinstance(error, LookupFailed):
        return 200, lookup_error_message(action, error)  # type: ignore[arg-type]  # the two subclasses
    if isinstance(error, KeepRefused):
        return 200, str(error)
    if isinstance(error, RecorderNotConnected):
        return 503, MESSAGE_RECORDER_NOT_CONNECTED
    if isinstance(error, RecorderTimeout):
        return 504, MESSAGE_RECORDER_TIMEOUT
    if isinstance(error, ClusterUnavailable):  # before StoreError: it is one
        return 503, MESSAGE_CLUSTER_UNAVAILABLE
    if isinstance(error, StoreError):
        # A full disk or failing writes: nothing was promised; /healthz shows the store as failing.
        return 503, MESSAGE_STORE_FAILING
    if isinstance(error, RecorderError):
        reason = f"{error.code} {error.text}".strip()
        return 200, f"The recorder refused the request: {reason}"
    return None


# Who asks when another cluster node forwards a KeepCall: that node checked the caller's key already.
CLUSTER_PRINCIPAL = Principal(ApiKeyConfig(key="", name="cluster node"), None)


async def keep_for_node(context: ActionContext, call_id: str, kind: str, unmark: bool) -> Outcome:
    """Run a KeepCall another node received for one of this node's calls, as this node's API would."""
    params = {"callID": call_id, "unmark": "1" if unmark else "0"}
    if kind != TYPE_KEEP:
        params["type"] = kind
    try:
        await keep_call(context, ActionRequest(ACTION_KEEP_CALL, params, CLUSTER_PRINCIPAL))
    except Exception as error:
        outcome = error_outcome(ACTION_KEEP_CALL, error)
        if outcome is None:
            raise
        return Outcome(*outcome)
    return Outcome(200)
