"""Operational view of the gateway: per-link and per-recorder state and the `/healthz` report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.events import LinkHealth, LinkState
from gateway.recording import RecorderControl

if TYPE_CHECKING:
    from gateway.retention import RetentionHealth


def health_report(
    links: Mapping[str, LinkHealth],
    recorders: Mapping[str, RecorderControl],
    *,
    ongoing_calls: int,
    stored_calls: int,
    retention: RetentionHealth | None = None,
    store_error: str | None = None,
    cluster: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`{"status", "links", "recorders", "calls", "store"[, "cluster"][, "retention"]}`; degraded when any link or
    recorder is down, the store refuses writes (`store.error` says why; links hold their lines meanwhile), or the
    cluster database cannot be reached.

    Retention failures do not degrade the status: nothing is lost while pruning waits, and they are counted.
    """
    recorder_states = {name: {"state": recorder_state(recorder)} for name, recorder in recorders.items()}
    all_up = all(link.state is LinkState.UP for link in links.values()) and all(
        state["state"] == "up" for state in recorder_states.values()
    )
    cluster_ok = cluster is None or bool(cluster.get("reachable") and cluster.get("session"))
    report: dict[str, Any] = {
        "status": "ok" if all_up and store_error is None and cluster_ok else "degraded",
        "links": {name: link.as_dict() for name, link in links.items()},
        "recorders": recorder_states,
        "calls": {"ongoing": ongoing_calls, "stored": stored_calls},
        "store": {
            "backend": "sqlite" if cluster is None else "postgresql",
            "state": "ok" if store_error is None else "failing",
            "error": store_error,
        },
    }
    if cluster is not None:
        # The local file keeps this node's journal and calls; the cluster database is reported on its own.
        report["cluster"] = cluster
    if retention is not None:
        report["retention"] = retention.as_dict()
    return report


def recorder_state(recorder: RecorderControl) -> str:
    """up; down (not connected); unresponsive: connected, but its last request timed out — it is dropped and
    reconnected after three in a row, and KeepCall answers 504 meanwhile."""
    if not recorder.connected:
        return "down"
    return "unresponsive" if getattr(recorder, "missed_replies", 0) else "up"
