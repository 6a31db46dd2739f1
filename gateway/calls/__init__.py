"""The call tracker: driver events → calls, correlation of PBX records with recorder calls, the calls in memory,
saving, and the lookups the API makes (ongoing / last / next, ids). tracker.CallTracker is the face."""

from gateway.calls.correlation import numbers_match
from gateway.calls.statuses import (
    LOOKUP_STATUSES,
    MAX_LAST_ENDED_BYTES,
    STATUS_LAST,
    STATUS_NEXT,
    STATUS_ONGOING,
    parse_statuses,
)
from gateway.calls.tracker import CallListener, CallTracker, ChangeListener, recording_mode_of

__all__ = [
    "LOOKUP_STATUSES",
    "MAX_LAST_ENDED_BYTES",
    "STATUS_LAST",
    "STATUS_NEXT",
    "STATUS_ONGOING",
    "CallListener",
    "CallTracker",
    "ChangeListener",
    "numbers_match",
    "parse_statuses",
    "recording_mode_of",
]
