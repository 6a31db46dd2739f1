"""The calls in memory: ongoing calls by id, party and recorder id, a bounded cache of finished calls, the
external ids of both, and the recordings running now. Every call has one object, shared by all lookups."""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Container

from gateway.model import Call, Recording

# Finished calls kept in memory for fast GetCallInformation/KeepCall right after a call; older ones
# are read back from the store. 10,000 calls is minutes of traffic on a busy site and ~20 MB.
DEFAULT_FINISHED_CACHE_SIZE = 10_000
# The finished-call cache is trimmed once it is this far over its size, so trimming costs O(1) per call.
EVICTION_BATCH = 1_000


class CallIndex:
    """Finds calls in memory. A finished call leaves the cache only once it is committed (`unsaved` does not
    hold it) and no multi-record group waits for it (`grouped()` does not)."""

    def __init__(
        self, finished_cache_size: int, *, unsaved: Container[str], grouped: Callable[[], Container[str]]
    ) -> None:
        self._finished_cache_size = finished_cache_size
        self._eviction_batch = max(1, min(EVICTION_BATCH, finished_cache_size // 10))
        self._evict_at = finished_cache_size + self._eviction_batch
        self._unsaved = unsaved
        self._grouped = grouped
        self.ongoing_by_id: dict[str, Call] = {}
        self._ongoing_by_party: dict[str, dict[str, Call]] = defaultdict(dict)
        self._ongoing_by_native: dict[tuple[str, str], Call] = {}  # (recorder, call native id)
        self._finished_by_id: OrderedDict[str, Call] = OrderedDict()
        # Calls in memory (ongoing or cached) by their external ids, so lookups see calls not yet committed.
        self._ids_by_platform: dict[str, set[str]] = defaultdict(set)
        self._ids_by_native: dict[str, set[str]] = defaultdict(set)
        self.active_recordings: dict[tuple[str, str], Recording] = {}  # (recorder, rec native id)

    # ---- finding

    def call(self, call_id: str) -> Call | None:
        return self.ongoing_by_id.get(call_id) or self._finished_by_id.get(call_id)

    def ongoing_by_native(self, recorder: str, native_id: str) -> Call | None:
        return self._ongoing_by_native.get((recorder, native_id))

    def ongoing_on_channel(self, recorder: str, channel: str) -> Call | None:
        for call in self.ongoing_by_id.values():
            if call.recorder == recorder and call.channel == channel:
                return call
        return None

    def ongoing_of(self, number: str) -> list[Call]:
        return list(self._ongoing_by_party.get(number, {}).values())

    def recent_finished(self, limit: int) -> list[Call]:
        """The calls that finished last (those still cached), newest first."""
        found: list[Call] = []
        for call in reversed(self._finished_by_id.values()):
            if len(found) >= limit:
                break
            found.append(call)
        return found

    def ids_by_platform_call_id(self, platform_call_id: str) -> set[str]:
        return set(self._ids_by_platform.get(platform_call_id, ()))

    def ids_by_native_id(self, native_id: str) -> set[str]:
        return set(self._ids_by_native.get(native_id, ()))

    # ---- keeping it current

    def index_ongoing(self, call: Call) -> None:
        self.ongoing_by_id[call.call_id] = call
        for number in call.parties:
            self._ongoing_by_party[number][call.call_id] = call
        if call.recorder and call.native_id:
            self._ongoing_by_native[(call.recorder, call.native_id)] = call
        self._index_external_ids(call)

    def unindex_ongoing(self, call: Call) -> None:
        self.ongoing_by_id.pop(call.call_id, None)
        for number in call.parties:
            calls = self._ongoing_by_party.get(number)
            if calls is not None:
                calls.pop(call.call_id, None)
                if not calls:
                    del self._ongoing_by_party[number]
        if call.recorder and call.native_id:
            self._ongoing_by_native.pop((call.recorder, call.native_id), None)

    def index_party(self, call: Call, number: str) -> None:
        """An ongoing call has a new party."""
        self._ongoing_by_party[number][call.call_id] = call

    def index_platform_call_id(self, call: Call, platform_call_id: str) -> None:
        self._ids_by_platform[platform_call_id].add(call.call_id)

    def adopt(self, call: Call) -> None:
        """A call read from the store becomes the one object in memory."""
        if call.ongoing:
            self.index_ongoing(call)
        else:
            self.remember_finished(call)

    def _index_external_ids(self, call: Call) -> None:
        if call.platform_call_id:
            self._ids_by_platform[call.platform_call_id].add(call.call_id)
        if call.native_id:
            self._ids_by_native[call.native_id].add(call.call_id)

    def _unindex_external_ids(self, call: Call) -> None:
        for index, value in (
            (self._ids_by_platform, call.platform_call_id),
            (self._ids_by_native, call.native_id),
        ):
            if value and value in index:
                index[value].discard(call.call_id)
                if not index[value]:
                    del index[value]

    def remember_finished(self, call: Call) -> None:
        finished = self._finished_by_id
        if call.call_id in finished:
            finished.move_to_end(call.call_id)  # a new one goes to the end by itself
        finished[call.call_id] = call
        self._index_external_ids(call)
        if len(self._finished_by_id) >= self._evict_at:
            self._evict_finished()

    def _evict_finished(self) -> None:
        """Drop the oldest cached calls down to the cache size, in one pass (amortised over EVICTION_BATCH calls).

        A call whose save is still queued stays (the store would not find it yet), and so does one
        waiting for the rest of its multi-record group.
        """
        excess = len(self._finished_by_id) - self._finished_cache_size
        pinned = self._grouped()
        evictable: list[str] = []
        for call_id in self._finished_by_id:  # oldest first; stop as soon as enough are found
            if call_id not in self._unsaved and call_id not in pinned:
                evictable.append(call_id)
                if len(evictable) >= excess:
                    break
        for call_id in evictable:
            self._unindex_external_ids(self._finished_by_id.pop(call_id))
        # Next pass a batch later, even when little could go (saves still queued): never a scan per call.
        self._evict_at = max(len(self._finished_by_id), self._finished_cache_size) + self._eviction_batch
