"""The Verba Business API actions (docs/api.md §6): RequestToken, GetCallID, KeepCall, GetCallInformation."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo

from gateway.api.auth import Principal
from gateway.api.lookup import CallFinder
from gateway.api.render import CallIdPayload, CallInformationPayload, NoPayload, Payload
from gateway.calls import CallTracker, parse_statuses, recording_mode_of
from gateway.errors import AmbiguousCall, ApiError, CallNotFound, NodeUnavailable, RecorderTimeout
from gateway.model import Call, Direction, RecordingMode
from gateway.recording import KeepRefused, RecordingService

ACTION_REQUEST_TOKEN = "RequestToken"
ACTION_GET_CALL_ID = "GetCallID"
ACTION_KEEP_CALL = "KeepCall"
ACTION_GET_CALL_INFORMATION = "GetCallInformation"

TYPE_MANUAL_RECORD = "manualrecord"
TYPE_DO_NOT_DELETE = "do_not_delete"
KEEP_CALL_TYPES = (TYPE_MANUAL_RECORD, TYPE_DO_NOT_DELETE)

# What each action says when the call is not there / not unique (Verba wording).
NOT_FOUND_MESSAGE = {
    ACTION_GET_CALL_ID: "Unable to retrieve the call identifier, because the call cannot be found.",
    ACTION_KEEP_CALL: "Unable to keep the call, because the call cannot be found.",
    ACTION_GET_CALL_INFORMATION: "Unable to retrieve the call information, because the call cannot be found.",
}
AMBIGUOUS_MESSAGE = {
    ACTION_GET_CALL_ID: "Unable to retrieve the call identifier, because more than one call was found.",
    ACTION_KEEP_CALL: "Unable to keep the call, because more than one call was found.",
    ACTION_GET_CALL_INFORMATION: "Unable to retrieve the call information, because more than one call was found.",
}
MANUAL_RECORDING_NOT_FOUND = (
    "Unable to retrieve the recording identifier, because no manual recording was made on the call."
)

# `status` lists remembered parsed: bounded by entries, and each value by MAX_CHARS_BY_PARAMETER["status"].
STATUS_MEMO_ENTRIES = 256
# The longest value each parameter can really carry, with room to spare. Longer ones are refused
# (400) before authentication and any lookup: no client gets the gateway to hash, compare, query
# or memoise megabytes it made up.
MAX_CHARS_BY_PARAMETER = {
    "action": 64,  # the longest action name is 18
    "responseType": 16,
    "apiKey": 64,  # a GUID is 36
    "token": 256,  # ours are 43
    "userName": 256,
    "password": 1024,  # a pass phrase, not a document
    "extension": 64,  # E.164 numbers are at most 15 digits; dial strings and SIP user parts stay well below
    "status": 64,  # "ongoing, last, next" is 19; duplicates are allowed, and harmless
    "type": 32,
    "unmark": 8,
    "callID": 64,  # a GUID
    "cid": 64,
    "platformCallID": 128,  # PBX call ids: 8-40 characters in every supported format
    "nativeID": 128,  # recorder call ids (TRS26140192)
}


def missing(name: str) -> ApiError:
    return ApiError(400, f"Missing parameter '{name}'")


def too_long(name: str, limit: int) -> ApiError:
    return ApiError(400, f"Parameter '{name}' is too long (at most {limit} characters)")


def check_parameter_lengths(params: Mapping[str, str]) -> None:
    """400 for the first known parameter longer than any real value (every occurrence counts)."""
    for name, value in params.items():
        limit = MAX_CHARS_BY_PARAMETER.get(name)
        if limit is not None and len(value) > limit:
            raise too_long(name, limit)


def invalid(name: str) -> ApiError:
    # Never echo the value: it came from outside and every response type must stay free of injected markup.
    return ApiError(400, f"Invalid value for parameter '{name}'")


MESSAGE_NODE_DOWN = "Unable to keep the call, because the gateway that owns it ({node}) is not running."
MESSAGE_NODE_SILENT = "Unable to keep the call, because the gateway that owns it ({node}) did not answer in time."
TYPE_KEEP = "keep"  # KeepCall without a type, as a cluster command names it


@dataclass(frozen=True, slots=True)
class ActionContext:
    tracker: CallTracker
    recording: RecordingService
    next_window_s: float
    finder: CallFinder


@dataclass(frozen=True, slots=True)
class ActionRequest:
    action: str
    params: Mapping[str, str]
    principal: Principal

    @property
    def sites(self) -> tuple[str, ...] | None:
        """The cluster nodes whose calls the caller may see (None: every node)."""
        return self.principal.key.sites

    def get(self, name: str) -> str | None:
        """A parameter's value, None when absent or empty."""
        value = self.params.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def flag(self, name: str) -> bool:
        value = self.get(name)
        if value is None:
            return False
        lowered = value.lower()
        if lowered in ("1", "true", "yes"):
            return True
        if lowered in ("0", "false", "no"):
            return False
        raise invalid(name)


def _call_id_parameter(request: ActionRequest) -> str | None:
    value = request.get("callID") or request.get("cid")
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise invalid("callID") from None


@functools.lru_cache(maxsize=STATUS_MEMO_ENTRIES)
def _statuses(value: str) -> tuple[str, ...]:
    """Each status once, in its first place (a second `next` would wait a second window). Clients send the same
    few lists again and again; a ValueError is not memoised."""
    return tuple(dict.fromkeys(parse_statuses(value)))


def _find_by_extension(context: ActionContext, request: ActionRequest, extension: str) -> Awaitable[Call]:
    # Not a coroutine itself: a parked status=next request holds one frame less.
    status = request.get("status")
    if status is None:
        raise missing("status")
    try:
        statuses = _statuses(status)
    except ValueError:
        raise invalid("status") from None
    return context.finder.find_by_status(extension, statuses, context.next_window_s, request.sites)


async def _find_call(context: ActionContext, request: ActionRequest, *, by_external_ids: bool) -> Call:
    """KeepCall / GetCallInformation lookup: callID, else extension+status (, else platformCallID / nativeID)."""
    call_id = _call_id_parameter(request)
    if call_id is not None:
        call = await context.finder.get_call(call_id, request.sites)
        if call is None:
            raise CallNotFound(call_id)
        return call
    extension = request.get("extension")
    if extension is not None:
        return await _find_by_extension(context, request, extension)
    if by_external_ids:
        platform_call_id = request.get("platformCallID")
        if platform_call_id is not None:
            return await context.finder.find_by_platform_call_id(platform_call_id, request.sites)
        native_id = request.get("nativeID")
        if native_id is not None:
            return await context.finder.find_by_native_id(native_id, request.sites)
        raise ApiError(
            400, "Missing parameter: one of 'callID', 'extension', 'platformCallID' or 'nativeID' is required"
        )
    raise ApiError(400, "Missing parameter: 'callID' or 'extension' is required")


async def get_call_id(context: ActionContext, request: ActionRequest) -> Payload:
    extension = request.get("extension")
    platform_call_id = request.get("platformCallID")
    native_id = request.get("nativeID")
    given = (extension is not None) + (platform_call_id is not None) + (native_id is not None)
    if not given:
        raise ApiError(400, "Missing parameter: one of 'extension', 'platformCallID' or 'nativeID' is required")
    if given > 1:
        raise ApiError(400, "Use exactly one of 'extension', 'platformCallID' or 'nativeID'")
    kind = request.get("type")
    if kind is not None and kind.lower() != TYPE_MANUAL_RECORD:
        raise invalid("type")
    finder, tracker = context.finder, context.tracker
    if kind is None and extension is None:  # the ID alone is asked for: no need to read the call
        if platform_call_id is not None:
            call_id = await finder.find_id_by_platform_call_id(platform_call_id, request.sites)
        else:
            call_id = await finder.find_id_by_native_id(native_id or "", request.sites)
        await tracker.stored(call_id)  # an ID handed out names a call that a crash cannot take back
        return CallIdPayload(call_id)
    if extension is not None:
        call = await _find_by_extension(context, request, extension)
    elif platform_call_id is not None:
        call = await finder.find_by_platform_call_id(platform_call_id, request.sites)
    else:
        call = await finder.find_by_native_id(native_id or "", request.sites)
    await tracker.stored(call.call_id)
    if kind is None:
        return CallIdPayload(call.call_id)
    recording = call.last_manual_recording
    if recording is None:
        raise KeepRefused(MANUAL_RECORDING_NOT_FOUND)
    return CallIdPayload(recording.recording_id)


async def keep_call(context: ActionContext, request: ActionRequest) -> Payload:
    kind = request.get("type")
    if kind is not None and kind.lower() not in KEEP_CALL_TYPES:
        raise invalid("type")
    unmark = request.flag("unmark")
    call = await _find_call(context, request, by_external_ids=False)
    if call.node is not None:  # another cluster node's call: that node runs it
        await _keep_on_owner(context, call, (kind or TYPE_KEEP).lower(), unmark)
        return NoPayload()
    if kind is None:
        await context.recording.keep(call, unmark=unmark)
    elif kind.lower() == TYPE_DO_NOT_DELETE:
        await context.recording.protect(call, unmark=unmark)
    else:
        await context.recording.manual_record(call, stop=unmark)
    # Code 0 promises the state: also when it was set already, by a request whose write is still queued.
    await context.tracker.stored(call.call_id)
    return NoPayload()


async def _keep_on_owner(context: ActionContext, call: Call, kind: str, unmark: bool) -> None:
    """KeepCall through the node that owns the call: its answer is ours, word for word."""
    cluster = context.finder.cluster
    assert cluster is not None and call.node is not None  # only cluster lookups find other nodes' calls
    try:
        outcome = await cluster.keep(call, kind, unmark)
    except NodeUnavailable:
        raise ApiError(503, MESSAGE_NODE_DOWN.format(node=call.node)) from None
    except TimeoutError as error:
        if kind == TYPE_MANUAL_RECORD:  # what the owner answers when its recorder is silent
            raise RecorderTimeout(call.recorder or call.node, 0.0) from error
        raise ApiError(504, MESSAGE_NODE_SILENT.format(node=call.node)) from None
    if not outcome.ok:
        raise ApiError(outcome.status, outcome.message or "")


def _time(value: datetime | None, tz: tzinfo) -> str | None:
    return value.astimezone(tz).isoformat(timespec="seconds") if value is not None else None


def _bit(value: bool) -> str:
    return "1" if value else "0"


def call_information(call: Call, mode: RecordingMode | None, tz: tzinfo) -> CallInformationPayload:
    duration = call.effective_duration_s
    fields = (
        ("ccdr_id", call.call_id),
        ("native_id", call.native_id),
        ("platform_call_id", call.platform_call_id),
        ("source_caller_id", call.calling),
        ("destination_caller_id", call.called),
        ("extension", call.extension),
        ("direction", call.direction.value if call.direction is not Direction.UNKNOWN else None),
        ("start_time", _time(call.start_time, tz)),
        ("connect_time", _time(call.connect_time, tz)),
        ("end_time", _time(call.end_time, tz)),
        ("duration", str(round(duration)) if duration is not None else None),
        ("recording_mode", mode.value if mode is not None else None),
        ("ondemand", _bit(mode is RecordingMode.ON_DEMAND)),
        ("kept", _bit(call.kept or (mode is RecordingMode.FULL and call.recorded))),
        ("manual", _bit(call.manual)),
        ("do_not_delete", _bit(call.do_not_delete)),
        ("recorded", _bit(call.recorded)),
        ("link", call.link),
    )
    recordings = tuple(
        (
            ("id", recording.recording_id),
            ("native_id", recording.native_id),
            ("start_time", _time(recording.start_time, tz)),
            ("end_time", _time(recording.end_time, tz)),
            ("manual", _bit(recording.manual)),
        )
        for recording in call.recordings
        if not recording.deleted
    )
    return CallInformationPayload(state=int(call.state), fields=fields, recordings=recordings)


async def get_call_information(context: ActionContext, request: ActionRequest) -> Payload:
    call = await _find_call(context, request, by_external_ids=True)
    await context.tracker.stored(call.call_id)
    return call_information(call, recording_mode_of(call, context.tracker), request.principal.tz)


ActionHandler = Callable[[ActionContext, ActionRequest], Awaitable[Payload]]
ACTIONS: dict[str, ActionHandler] = {
    ACTION_GET_CALL_ID: get_call_id,
    ACTION_KEEP_CALL: keep_call,
    ACTION_GET_CALL_INFORMATION: get_call_information,
}
KNOWN_ACTIONS = frozenset(ACTIONS) | {ACTION_REQUEST_TOKEN}


def lookup_error_message(action: str, error: CallNotFound | AmbiguousCall) -> str:
    table = AMBIGUOUS_MESSAGE if isinstance(error, AmbiguousCall) else NOT_FOUND_MESSAGE
    return table.get(action, NOT_FOUND_MESSAGE[ACTION_GET_CALL_ID])
