"""The running gateway: wires config → store → call tracker → recorders/links → HTTP API, and shuts it all down."""

from __future__ import annotations

import gc
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any

import structlog
from aiohttp import web

from drivers.smdr.link import SmdrLink
from drivers.trunkrec.client import TrunkRecorderClient
from gateway.api.app import ApiServices, create_app, create_runner, ssl_context
from gateway.api.auth import Authenticator
from gateway.api.lookup import CallFinder
from gateway.api.operator import OperatorServices, add_routes
from gateway.api.outcomes import keep_for_node
from gateway.api.verba import ActionContext
from gateway.calls import CallTracker
from gateway.cluster.node import ClusterNode
from gateway.cluster.tokens import ClusterTokens
from gateway.config import GatewayConfig
from gateway.events import DriverEvent, LinkHealth
from gateway.feed import RECORDER_STATE, EventFeed
from gateway.metrics import GatewayMetrics
from gateway.model import Call
from gateway.ops import health_report, recorder_state
from gateway.recording import RecorderControl, RecordingPolicy, RecordingService
from gateway.retention import RetentionPruner
from gateway.status import status_snapshot
from gateway.store import PRUNE_CALLS, Store
from gateway.watch import LinkWatch

log = structlog.get_logger(__name__)

# Young collections stay frequent; full ones become rare. With CPython's default (700, 10, 10) a full
# collection walks every cached call about every 70,000 allocations: during an SMDR burst that was a third
# of the per-record cost of the call tracker (docs/benchmarks.md). The gateway makes little cyclic garbage.
GC_THRESHOLDS = (10_000, 10, 1_000)
# How long the event loop may keep the GIL while the store's writer (or a reader) thread waits for it. Every
# SQLite statement gives the GIL up and must take it back; with CPython's 5 ms the writer spent most of an
# SMDR burst waiting, and the links waited for its journal commits. 0.5 ms: +8-10 % records/s at saturation,
# same API delays (docs/benchmarks.md).
SWITCH_INTERVAL_S = 0.0005


def tune_interpreter() -> None:
    """For a long-running gateway process, before it starts: full collections are rare and threads waiting for
    the GIL get it sooner — during start-up too, where replaying a link's journal is an SMDR burst of its own
    (with CPython's defaults, 100,000 journal lines took ~30 % longer to replay: docs/benchmarks.md). The process
    owner calls it — not tests, which run many gateways in one interpreter."""
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def freeze_startup_objects() -> None:
    """Once the gateway has started: what start-up made (the ongoing calls, the imports) is never collected, so
    full collections walk only what came after."""
    gc.collect()
    gc.freeze()


class Gateway:
    """One gateway process's components. `start()` returns when the HTTP port accepts connections."""

    def __init__(self, config: GatewayConfig, *, recorders: dict[str, RecorderControl] | None = None) -> None:
        self.config = config
        self.store = Store(config.store.path, sync=config.store.sync)
        self.tracker = CallTracker(
            self.store,
            config.extensions,
            correlation_window_by_link={
                link.name: float(link.options["correlation_window"])
                for link in config.links
                if "correlation_window" in link.options
            },
        )
        self.feed = EventFeed(self.store)
        self.tracker.on_change(self._publish_change)
        self.recorder_clients = [
            TrunkRecorderClient(recorder, self.submit, on_change=partial(self._recorder_changed, recorder.name))
            for recorder in config.recorders
        ]
        self._recorder_states: dict[str, str] = {}
        self.recorders: dict[str, RecorderControl] = (
            recorders if recorders is not None else {client.name: client for client in self.recorder_clients}
        )
        self.links: dict[str, LinkHealth] = {link.name: LinkHealth(link.name) for link in config.links}
        self.watch = LinkWatch(self.feed, self.links)
        self.smdr_links = [
            SmdrLink(
                link,
                self.store,
                self.submit,
                self.links[link.name],
                submit_replayed=self.tracker.apply_replayed,
                note_progress=self.tracker.note_progress,
                watcher=self.watch,
            )
            for link in config.links
        ]
        for smdr_link in self.smdr_links:
            self.tracker.add_progress_source(smdr_link.progress)
        self.metrics = GatewayMetrics(self)  # this gateway's own registry: tests run several in one process
        observe_command = self.metrics.observe_recorder_command
        self.recording = RecordingService(self.tracker, self.recorders, observe_command=observe_command)
        self.policy = RecordingPolicy(
            self.tracker, self.recorders, retention_s=config.on_demand.retention_s, observe_command=observe_command
        )
        self.cluster: ClusterNode | None = None
        if config.store.url is not None:
            self.cluster = ClusterNode(
                config.store.url,
                config.node,
                tracker=self.tracker,
                feed=self.feed,
                store_instance=lambda: self.store.instance_id,
                extensions=config.extensions,
                recorders=config.recorders,
                recorder_states=lambda: {name: recorder_state(rec) for name, rec in self.recorders.items()},
                key_sites={key.name: key.sites for key in config.api.keys},
            )
        self.actions = ActionContext(
            self.tracker, self.recording, config.api.next_window_s, CallFinder(self.tracker, self.cluster)
        )
        if self.cluster is not None:
            self.cluster.serve_commands(partial(keep_for_node, self.actions))
        # In a cluster, tokens are the cluster's: one from RequestToken on any node works on every node.
        tokens = ClusterTokens(self.cluster.database) if self.cluster is not None else self.store.tokens
        self.auth = Authenticator(config.api, tokens=tokens)
        self.retention = RetentionPruner(self.store, config.store.retention, tokens=tokens)
        self.app: web.Application = create_app(
            ApiServices(
                auth=self.auth,
                actions=self.actions,
                health=self.health,
                ops_networks=config.http.ops_networks,
                metrics=self.metrics.handler,
                observe_request=self.metrics.observe_api_request,
            )
        )
        add_routes(
            self.app,
            OperatorServices(
                feed=self.feed,
                watch=self.watch,
                link_names=frozenset(self.links),
                status=self.status,
                quarantine=self.store.quarantined_page,
            ),
            self.auth,
        )
        self._runner: web.AppRunner | None = None
        self._stored_calls_at_start = 0
        self.port: int | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.config.http.tls else "http"
        host = self.config.http.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    def submit(self, event: DriverEvent) -> Call | None:
        """Where drivers hand in what they saw."""
        return self.tracker.apply(event)

    def _publish_change(self, change: str, call: Call, detail: Mapping[str, object]) -> None:
        self.feed.publish_call(change, call, **detail)

    def _recorder_changed(self, name: str) -> None:
        """recorder.state when the state /healthz shows changes (up, down, unresponsive) or a span alarm does."""
        recorder = self.recorders.get(name)
        if recorder is None:
            return
        state = recorder_state(recorder)
        alarms = dict(getattr(recorder, "span_alarms", {}))
        key = f"{state} {sorted(alarms.items())}"
        if self._recorder_states.get(name) != key:
            self._recorder_states[name] = key
            self.feed.publish(RECORDER_STATE, {"recorder": name, "state": state, "spanAlarms": alarms})

    async def status(self) -> dict[str, Any]:
        """The status page's starting point; the event stream from `lastEventId` on keeps it current."""
        return await status_snapshot(self)

    async def health(self) -> dict[str, Any]:
        cluster = await self.cluster.health() if self.cluster is not None else None
        return health_report(
            self.links,
            self.recorders,
            ongoing_calls=self.tracker.ongoing_count,
            stored_calls=self._stored_calls_at_start
            + self.tracker.new_call_count
            - self.retention.health.pruned_total[PRUNE_CALLS],
            retention=self.retention.health,
            store_error=self.store.write_error,
            cluster=cluster,
        )

    async def start(self) -> None:
        await self.store.open()
        try:
            await self.feed.start()
            await self.tracker.start()
            # Before any link or recorder is open: what the journal holds past each link's committed progress
            # (journalled before a crash, not yet applied) becomes calls again, with the callIDs it had.
            for link in self.smdr_links:
                await link.recover()
            await self.tracker.flush()
            self._stored_calls_at_start = await self.store.count_calls() - self.tracker.new_call_count
            for link_name, errors in (await self.store.quarantine_counts()).items():
                if link_name in self.links:
                    self.links[link_name].errors = errors
            for client in self.recorder_clients:
                await client.open()
            for link in self.smdr_links:
                await link.open()
            self.policy.start()
            self.retention.start()
            if self.cluster is not None:
                await self.cluster.start()
            http = self.config.http
            self._runner = create_runner(self.app, http.max_connections)
            await self._runner.setup()
            context = ssl_context(str(http.tls.certfile), str(http.tls.keyfile)) if http.tls else None
            site = web.TCPSite(self._runner, http.host, http.port, ssl_context=context)
            await site.start()
        except BaseException:
            await self.stop()
            raise
        self.port = self._bound_port(site)
        log.info(
            "gateway ready",
            url=self.url,
            calls_stored=self._stored_calls_at_start,
            links=len(self.links),
            recorders=len(self.recorders),
        )

    @staticmethod
    def _bound_port(site: web.TCPSite) -> int:
        server = site._server  # the only way to learn the port when the config asks for port 0
        sockets = getattr(server, "sockets", None)  # asyncio's Server, or any event loop's equivalent
        assert sockets, "the HTTP site has no listening socket"
        return sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()
        self.feed.end_streams()  # event streams and taps never end by themselves: the server would wait for them
        self.watch.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.policy.close()
        await self.retention.close()
        for link in self.smdr_links:
            await link.close()
        for client in self.recorder_clients:
            await client.close()
        await self.tracker.flush()
        self.tracker.close()
        await self.feed.close()
        await self.store.close()
        log.info("gateway stopped")
