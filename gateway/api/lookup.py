"""Finding the call an API request names, on this gateway and — in a cluster — on every node the caller may see.

Without a cluster every lookup is the call tracker's. In a cluster, this node's own calls come from its tracker
(memory and local store: the freshest state) and other nodes' calls from the cluster database; a lookup by
extension searches the nodes that publish that extension (every node when none does), limited to the API key's
`sites`. Two calls found anywhere are "more than one call", never a guess.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING, TypeVar

from gateway.calls import CallTracker
from gateway.calls.statuses import STATUS_LAST, STATUS_NEXT, STATUS_ONGOING
from gateway.errors import AmbiguousCall, CallNotFound
from gateway.model import Call

if TYPE_CHECKING:
    from gateway.cluster.node import ClusterNode

Sites = Collection[str] | None
T = TypeVar("T")


class CallFinder:
    def __init__(self, tracker: CallTracker, cluster: ClusterNode | None = None) -> None:
        self._tracker = tracker
        self.cluster = cluster

    def _local_visible(self, sites: Sites) -> bool:
        return self.cluster is None or sites is None or self.cluster.node in sites

    async def get_call(self, call_id: str, sites: Sites) -> Call | None:
        if self._local_visible(sites):
            call = await self._tracker.get_call(call_id)
            if call is not None:
                return call
        if self.cluster is None:
            return None
        return await self.cluster.get_call(call_id, _listed(sites))

    # ---- by extension and status

    def find_by_status(
        self, number: str, statuses: Iterable[str], next_window_s: float, sites: Sites
    ) -> Awaitable[Call]:
        # Without a cluster, the tracker's own coroutine: a status=next request parks no frame of this one.
        if self.cluster is None:
            return self._tracker.find_by_status(number, statuses, next_window_s)
        return self._find_by_status_in_cluster(self.cluster, number, statuses, next_window_s, sites)

    async def _find_by_status_in_cluster(
        self, cluster: ClusterNode, number: str, statuses: Iterable[str], next_window_s: float, sites: Sites
    ) -> Call:
        owners = await cluster.owners(number)
        local = self._local_visible(sites) and (not owners or cluster.node in owners)
        remote: Sites  # the other nodes to search (None: all of them); empty: none
        if owners:
            remote = owners - {cluster.node}
            if sites is not None:
                remote &= set(sites)
        else:
            remote = None if sites is None else set(sites) - {cluster.node}
        search_remote = remote is None or bool(remote)
        statuses = list(statuses)
        # `next` after other statuses: the waiter is parked before they ask the database, so that a call starting
        # on another node while they do is either found by them or wakes the waiter — never missed in between.
        parked = self._park_next(number, next_window_s) if STATUS_NEXT in statuses[1:] else None
        try:
            if parked is not None:
                await asyncio.sleep(0)  # its first step registers the waiter
            for status in statuses:
                if status == STATUS_ONGOING:
                    found = self._tracker.ongoing_calls_of(number) if local else []
                    if search_remote:
                        found += await cluster.ongoing_of(number, _listed(remote))
                elif status == STATUS_LAST:
                    found = await self._tracker.last_calls_of(number) if local else []
                    if search_remote:
                        found = _latest_ended(found + await cluster.last_of(number, _listed(remote)))
                elif status == STATUS_NEXT:
                    call = await self._next(number, next_window_s, local, remote, parked)
                    parked = None
                    found = [call] if call is not None else []
                else:
                    raise ValueError(status)
                if len(found) > 1:
                    raise AmbiguousCall(f"{len(found)} calls of {number} match status {status}")
                if found:
                    return found[0]
            raise CallNotFound(number)
        finally:
            if parked is not None:
                parked.cancel()

    def _park_next(self, number: str, window_s: float) -> asyncio.Task[Call | None]:
        """A waiter for the next call of `number`, parked now (the task registers it at its first step)."""
        task = asyncio.ensure_future(self._tracker.wait_for_next_call(number, window_s))
        # Cancelled unawaited when another status answers first: nothing to report then.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    async def _next(
        self,
        number: str,
        window_s: float,
        local: bool,
        remote: Sites,
        parked: asyncio.Task[Call | None] | None = None,
    ) -> Call | None:
        """The next call of `number` to start on a node searched; others that start meanwhile are passed over."""
        me = self.cluster.node if self.cluster is not None else None

        def searched(call: Call) -> bool:
            if call.node is None or call.node == me:
                return local
            return remote is None or call.node in remote

        deadline = time.monotonic() + window_s
        while (left := deadline - time.monotonic()) > 0:
            if parked is not None:
                call, parked = await parked, None
            else:
                call = await self._tracker.wait_for_next_call(number, left)
            if call is None or searched(call):
                return call
        return None

    # ---- by the PBX's or the recorder's call id

    # Each: this node's answer (the tracker's, which raises when it finds none or two) and the other nodes'.

    async def find_by_platform_call_id(self, platform_call_id: str, sites: Sites) -> Call:
        local = self._tracker.find_by_platform_call_id
        if self.cluster is None:
            return await local(platform_call_id)
        remote = await self.cluster.by_platform_call_id(platform_call_id, _listed(sites))
        return await _single(self._visible(local, sites), platform_call_id, remote, _call_id)

    async def find_by_native_id(self, native_id: str, sites: Sites) -> Call:
        local = self._tracker.find_by_native_id
        if self.cluster is None:
            return await local(native_id)
        remote = await self.cluster.by_native_id(native_id, _listed(sites))
        return await _single(self._visible(local, sites), native_id, remote, _call_id)

    async def find_id_by_platform_call_id(self, platform_call_id: str, sites: Sites) -> str:
        """Only the callID (all GetCallID needs): indexed queries here and in the cluster, no call read."""
        local = self._tracker.find_id_by_platform_call_id
        if self.cluster is None:
            return await local(platform_call_id)
        remote = await self.cluster.ids_by_platform_call_id(platform_call_id, _listed(sites))
        return await _single(self._visible(local, sites), platform_call_id, remote, str)

    async def find_id_by_native_id(self, native_id: str, sites: Sites) -> str:
        local = self._tracker.find_id_by_native_id
        if self.cluster is None:
            return await local(native_id)
        remote = await self.cluster.ids_by_native_id(native_id, _listed(sites))
        return await _single(self._visible(local, sites), native_id, remote, str)

    def _visible(self, local: Callable[[str], Awaitable[T]], sites: Sites) -> Callable[[str], Awaitable[T]] | None:
        """This node's lookup, when the caller may see this node's calls."""
        return local if self._local_visible(sites) else None


async def _single(
    local: Callable[[str], Awaitable[T]] | None, value: str, remote: list[T], call_id: Callable[[T], str]
) -> T:
    """Exactly one call (or callID) between this node's (`local(value)`, which raises when it finds none or two)
    and the other nodes' (`remote`)."""
    found: dict[str, T] = {}
    if local is not None:
        try:
            hit = await local(value)
            found[call_id(hit)] = hit
        except CallNotFound:
            pass
    for hit in remote:
        found.setdefault(call_id(hit), hit)
    if len(found) > 1:
        raise AmbiguousCall(f"{len(found)} calls have {value}")
    if not found:
        raise CallNotFound(value)
    return next(iter(found.values()))


def _call_id(call: Call) -> str:
    return call.call_id


def _listed(sites: Sites) -> list[str] | None:
    return None if sites is None else sorted(sites)


def _latest_ended(calls: list[Call]) -> list[Call]:
    """Of the calls each node found last, those that ended latest (ties stay: they are ambiguous)."""
    ended = [(call.end_time, call) for call in calls if call.end_time is not None]
    if not ended:
        return []
    latest = max(end_time for end_time, _ in ended)
    return [call for end_time, call in ended if end_time == latest]
