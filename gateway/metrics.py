"""The gateway's Prometheus metrics (`GET /metrics`): a registry per running gateway, never the library's global one.

State the gateway keeps anyway (link health, recorder connections, ongoing calls, the store's size) is read when
a scrape comes, by a collector, instead of being counted a second time; only recorder commands and API requests,
which nothing else measures, have counters and histograms of their own. prometheus-client writes the text format
and escapes the label values; label values from outside (API action names) are bounded before they get here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.errors import StoreError
from gateway.events import LinkHealth, LinkState
from gateway.ops import recorder_state
from gateway.recording import RecorderControl

log = structlog.get_logger(__name__)

# Recorder commands answer in milliseconds on a LAN; the recorder timeout (2 s by default) ends the slow ones.
RECORDER_COMMAND_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# API answers take a millisecond or two; a `status=next` wait lasts up to api.next_window (60 s by default).
API_REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Tracker(Protocol):
    @property
    def ongoing_count(self) -> int: ...


class _StoreSpace(Protocol):
    @property
    def file_bytes(self) -> int: ...


class _Store(Protocol):
    def space(self) -> Awaitable[_StoreSpace]: ...


class MetricsSource(Protocol):
    """The parts of the running gateway (gateway.service.Gateway) whose state the metrics read at scrape time."""

    @property
    def links(self) -> Mapping[str, LinkHealth]: ...

    @property
    def recorders(self) -> Mapping[str, RecorderControl]: ...

    @property
    def tracker(self) -> _Tracker: ...

    @property
    def store(self) -> _Store: ...


class _StateCollector(Collector):
    """Gauges and counters of what the gateway keeps as state, read at each scrape (on the event loop)."""

    def __init__(self, source: MetricsSource, store_bytes: Callable[[], int | None]) -> None:
        self._source = source
        self._store_bytes = store_bytes

    def collect(self) -> Iterator[Metric]:
        links = self._source.links
        up = GaugeMetricFamily("gateway_link_up", "1 while the PBX link is connected, else 0.", labels=["link"])
        records = CounterMetricFamily(
            "gateway_link_records", "Records parsed from lines the link read since start-up.", labels=["link"]
        )
        errors = CounterMetricFamily(
            "gateway_link_errors",
            "Lines of the link quarantined (counted on from the store's total at start-up).",
            labels=["link"],
        )
        reconnects = CounterMetricFamily(
            "gateway_link_reconnects",
            "Times the link came up again after it had been up since start-up (the first connection not counted).",
            labels=["link"],
        )
        for name, health in links.items():
            up.add_metric([name], 1 if health.state is LinkState.UP else 0)
            records.add_metric([name], health.records)
            errors.add_metric([name], health.errors)
            reconnects.add_metric([name], health.reconnects)
        yield from (up, records, errors, reconnects)

        recorder_up = GaugeMetricFamily(
            "gateway_recorder_up",
            "1 while the recorder is connected and answering (/healthz 'up'), else 0.",
            labels=["recorder"],
        )
        connects = CounterMetricFamily(
            "gateway_recorder_connects",
            "Sessions with the recorder that reached ready (banner and state replay) since start-up.",
            labels=["recorder"],
        )
        protocol_errors = CounterMetricFamily(
            "gateway_recorder_protocol_errors",
            "Lines from the recorder that did not parse as TRUNKREC/1 since start-up.",
            labels=["recorder"],
        )
        for name, recorder in self._source.recorders.items():
            recorder_up.add_metric([name], 1 if recorder_state(recorder) == "up" else 0)
            # A recorder with no driver attached (or another driver) may not count these.
            if (count := getattr(recorder, "connects", None)) is not None:
                connects.add_metric([name], count)
            if (count := getattr(recorder, "protocol_errors", None)) is not None:
                protocol_errors.add_metric([name], count)
        yield from (recorder_up, connects, protocol_errors)

        yield GaugeMetricFamily(
            "gateway_calls_ongoing", "Calls in progress now.", value=self._source.tracker.ongoing_count
        )
        store_bytes = self._store_bytes()
        if store_bytes is not None:  # unknown while the store cannot be read: no sample rather than a wrong one
            yield GaugeMetricFamily("gateway_store_bytes", "Size of the store's database file.", value=store_bytes)

        cluster = getattr(self._source, "cluster", None)
        if cluster is not None:  # store.url: this gateway is a node of a cluster on PostgreSQL
            yield GaugeMetricFamily(
                "gateway_cluster_database_up",
                "1 while the cluster database answers this node (its session holds the node's lock), else 0.",
                value=int(cluster.database.reachable and cluster.session_up),
            )
            yield GaugeMetricFamily(
                "gateway_cluster_unshipped_events",
                "Changes this node has stored locally that the cluster database does not have yet.",
                value=cluster.unshipped_events,
            )
            yield CounterMetricFamily(
                "gateway_cluster_shipped_calls",
                "Call states this node has written to the cluster database since start.",
                value=cluster.shipper.shipped_calls,
            )


class GatewayMetrics:
    """One gateway's metrics: `observe_*` are called where commands and requests happen; `handler` serves them."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source
        self._store_bytes: int | None = None
        self.registry = CollectorRegistry()
        self._recorder_commands = Counter(
            "gateway_recorder_commands",
            "Commands sent to a recorder (or refused for want of a connection), by outcome: ok, err, timeout, down.",
            ["recorder", "verb", "result"],
            registry=self.registry,
        )
        self._recorder_command_seconds = Histogram(
            "gateway_recorder_command_seconds",
            "Time from sending a recorder command to its reply (or its timeout).",
            ["recorder", "verb"],
            buckets=RECORDER_COMMAND_BUCKETS_S,
            registry=self.registry,
        )
        self._api_requests = Counter(
            "gateway_api_requests",
            "Verba API requests answered, by action ('other' for an unknown one) and HTTP status "
            "(499: the client went away first).",
            ["action", "code"],
            registry=self.registry,
        )
        self._api_request_seconds = Histogram(
            "gateway_api_request_seconds",
            "Time to answer a Verba API request, status=next waits included.",
            ["action"],
            buckets=API_REQUEST_BUCKETS_S,
            registry=self.registry,
        )
        self._api_request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.registry.register(_StateCollector(source, lambda: self._store_bytes))
        self._serve = make_aiohttp_handler(self.registry)

    def observe_recorder_command(self, recorder: str, verb: str, result: str, seconds: float | None) -> None:
        """`seconds` None: the command was not sent (no connection), so it has no duration to count."""
        self._recorder_commands.labels(recorder, verb, result).inc()
        if seconds is not None:
            self._recorder_command_seconds.labels(recorder, verb).observe(seconds)

    def observe_api_request(self, action: str, code: int, seconds: float) -> None:
        """`action` must be one of a bounded set (the known actions and 'other'): every value is a new series."""
        children = self._api_request_children.get((action, code))
        if children is None:
            # labels() validates and looks its arguments up on every call: a tenth of an API answer's own cost.
            # The pairs are bounded (actions × HTTP statuses), so their children are kept.
            children = self._api_request_children[(action, code)] = (
                self._api_requests.labels(action, str(code)),
                self._api_request_seconds.labels(action),
            )
        count, duration = children
        count.inc()
        duration.observe(seconds)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        """`GET /metrics`: the store's size is read first (a query, off the event loop), then everything is written
        by prometheus-client, in the format the scraper asks for."""
        try:
            self._store_bytes = (await self._source.store.space()).file_bytes
        except StoreError as error:
            log.debug("store size unknown for metrics", error=str(error))
            self._store_bytes = None
        return await self._serve(request)
