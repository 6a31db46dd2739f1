// The status page: the gateway's state from /status/state, then kept current by /events (from the state's
// lastEventId on; the browser resumes with Last-Event-ID after a drop). No polling, no reloads.
// Everything from the gateway is text from outside (PBX lines, numbers, link names): it goes into the page through
// textContent and dataset only, never as HTML.
"use strict";

const FINISHED_SHOWN = 50;
const LINES_SHOWN = 12;
const EVENT_TYPES = "call.*,recording.*,link.*,recorder.state,line.quarantined";
const FINISHED = 1; // a call's state once it has ended (GetCallInformation's verbacdr state)

const view = {
  node: null,
  links: new Map(), // name → link as /status/state gives it, kept current
  recorders: new Map(),
  ongoing: new Map(), // callID → call
  ongoingTotal: 0, // the page lists at most what the state listed; the count stays exact
  finished: [],
  store: null,
};

function credentials() {
  // The page's own key or token goes along to its state and stream; nothing else from the address does.
  const own = new URLSearchParams(location.search);
  const passed = new URLSearchParams();
  for (const name of ["apiKey", "token"]) {
    if (own.get(name)) passed.set(name, own.get(name));
  }
  return passed;
}

function el(tag, text, attributes) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "class") node.className = value;
    else node.dataset[name] = String(value);
  }
  return node;
}

function clock(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  return isNaN(at) ? iso : at.toLocaleTimeString([], { hour12: false });
}

function when(iso) {
  if (!iso) return "—";
  const at = new Date(iso);
  return isNaN(at) ? iso : at.toLocaleString([], { hour12: false });
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return "unknown";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "kept forever";
  if (seconds % 86400 === 0) return `${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  return `${seconds} s`;
}

function stateBadge(state) {
  return el("span", state, { class: "state", state });
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.append(td);
  }
  return tr;
}

function fillTable(id, rows, columns, empty) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
  if (!rows.length) {
    const td = el("td", empty, { class: "empty" });
    td.colSpan = columns;
    const tr = document.createElement("tr");
    tr.append(td);
    body.append(tr);
  }
}

// ---- rendering (coalesced: a burst of events renders once)

let renderDue = false;

function render() {
  if (renderDue) return;
  renderDue = true;
  setTimeout(() => {
    renderDue = false;
    renderLinks();
    renderRecorders();
    renderCalls();
    renderStore();
  }, 0);
}

function lineList(lines, withReason, className) {
  const list = el("ul", null, { class: className });
  for (const line of lines) {
    const item = el("li");
    item.append(el("time", clock(line.at)), document.createTextNode(line.raw));
    if (withReason) item.append(el("span", line.reason, { class: "reason" }));
    list.append(item);
  }
  if (!lines.length) list.append(el("li", "none"));
  return list;
}

function renderLinks() {
  const box = document.getElementById("links");
  const blocks = [];
  for (const link of view.links.values()) {
    const block = el("div", null, { class: "link", link: link.name });
    block.append(el("h3", link.name));
    const facts = el("div", null, { class: "facts" });
    const fact = (label, value) => {
      const span = el("span");
      span.append(el("b", `${label}: `), value instanceof Node ? value : document.createTextNode(value));
      return span;
    };
    facts.append(
      fact("state", stateBadge(link.state)),
      fact("format", link.format),
      fact("address", link.url),
      fact("records", link.records),
      fact("errors", link.errors),
      fact("last record", when(link.last_record_at)),
    );
    const recent = el("div");
    recent.append(el("h4", "Last lines"), lineList(link.lines || [], false, "lines recent"));
    const quarantined = el("div");
    quarantined.append(
      el("h4", "Last quarantined lines"),
      lineList(link.quarantined || [], true, "lines quarantined"),
    );
    const columns = el("div", null, { class: "columns" });
    columns.append(recent, quarantined);
    block.append(facts, columns);
    blocks.push(block);
  }
  if (!blocks.length) blocks.push(el("p", "No PBX links configured."));
  box.replaceChildren(...blocks);
}

function renderRecorders() {
  const rows = [];
  for (const recorder of view.recorders.values()) {
    const calls = [...view.ongoing.values()].filter((call) => call.recorder === recorder.name);
    const recording = calls.filter((call) => call.recording).length;
    const total = recorder.channels.total;
    const alarms = Object.entries(recorder.spanAlarms || {}).map(([span, alarm]) => `${span}: ${alarm}`);
    const tr = row([
      recorder.name,
      recorder.url,
      stateBadge(recorder.state),
      total ?? "unknown",
      total === null || total === undefined ? "" : Math.max(0, total - calls.length),
      calls.length - recording,
      recording,
      alarms.join(", ") || "none",
    ]);
    tr.dataset.recorder = recorder.name;
    rows.push(tr);
  }
  fillTable("recorders", rows, 8, "No trunk recorders configured.");
}

function callCells(call) {
  const where = call.recorder ? `${call.recorder} ${call.channel || ""}`.trim() : "";
  return [call.extension, call.direction, call.calling, call.called, where, call.link || ""];
}

function renderCalls() {
  const ongoing = [...view.ongoing.values()].sort((a, b) => (a.start < b.start ? 1 : -1));
  fillTable(
    "ongoing",
    ongoing.map((call) => {
      const recording = call.recording ? el("span", "recording", { class: "recording" }) : "no";
      const tr = row([...callCells(call), clock(call.start), recording, call.callID]);
      tr.dataset.call = call.callID;
      return tr;
    }),
    9,
    "No calls in progress.",
  );
  document.getElementById("ongoing-count").textContent = `(${view.ongoingTotal})`;
  fillTable(
    "finished",
    view.finished.map((call) => {
      const kept = call.doNotDelete ? "protected" : call.kept ? "kept" : "";
      const tr = row([...callCells(call), clock(call.start), clock(call.end), kept, call.callID]);
      tr.dataset.call = call.callID;
      return tr;
    }),
    10,
    "No finished calls yet.",
  );
}

function renderStore() {
  const store = view.store;
  const list = document.getElementById("store");
  if (!store) return;
  const entries = [
    ["File", store.path],
    ["Size", size(store.bytes)],
    ["State", stateBadge(store.state)],
    ["Calls kept", duration(store.retention.callsS)],
    ["Journal kept", duration(store.retention.journalS)],
    ["Quarantine kept", duration(store.retention.quarantineS)],
  ];
  if (store.error) entries.push(["Error", store.error]);
  list.replaceChildren();
  for (const [label, value] of entries) {
    const dd = el("dd");
    dd.append(value instanceof Node ? value : document.createTextNode(value));
    list.append(el("dt", label), dd);
  }
}

// ---- state and events

function applyState(state) {
  view.node = state.node;
  document.getElementById("node").textContent = state.node ? `— ${state.node}` : "";
  view.links = new Map(state.links.map((link) => [link.name, link]));
  view.recorders = new Map(state.recorders.map((recorder) => [recorder.name, recorder]));
  view.ongoing = new Map(state.calls.ongoingShown.map((call) => [call.callID, call]));
  view.ongoingTotal = state.calls.ongoing;
  view.finished = state.calls.finished.slice(0, FINISHED_SHOWN);
  view.store = state.store;
  render();
}

function callChanged(name, call) {
  if (name === "call.ended" || call.state === FINISHED) {
    if (view.ongoing.delete(call.callID) || view.ongoingTotal > view.ongoing.size) {
      view.ongoingTotal = Math.max(0, view.ongoingTotal - 1);
    }
    view.finished = [call, ...view.finished.filter((seen) => seen.callID !== call.callID)].slice(0, FINISHED_SHOWN);
  } else {
    if (!view.ongoing.has(call.callID)) view.ongoingTotal += 1;
    view.ongoing.set(call.callID, call);
  }
}

const handlers = {
  "link.state": (data) => {
    const link = view.links.get(data.link);
    if (link) link.state = data.state;
  },
  "link.counts": (data) => {
    const link = view.links.get(data.link);
    if (!link) return;
    Object.assign(link, {
      state: data.state,
      records: data.records,
      errors: data.errors,
      last_record_at: data.last_record_at,
      lines: data.lines,
    });
  },
  "line.quarantined": (data) => {
    const link = view.links.get(data.link);
    if (!link) return;
    link.quarantined = [...(link.quarantined || []), { at: data.at, raw: data.raw, reason: data.reason }].slice(
      -LINES_SHOWN,
    );
  },
  "recorder.state": (data) => {
    const recorder = view.recorders.get(data.recorder);
    if (!recorder) return;
    recorder.state = data.state;
    recorder.spanAlarms = data.spanAlarms;
  },
};

function showFeed(state, text) {
  const feed = document.getElementById("feed");
  feed.dataset.state = state;
  feed.textContent = text;
}

function listen(lastEventId) {
  const query = credentials();
  query.set("types", EVENT_TYPES);
  query.set("lastEventId", String(lastEventId));
  const source = new EventSource(`/events?${query}`);
  source.onopen = () => showFeed("live", "Live");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      showFeed("closed", "Event stream refused; reload the page");
    } else {
      showFeed("reconnecting", "Reconnecting…");
    }
  };
  const names = [
    "call.started",
    "call.connected",
    "call.ended",
    "call.updated",
    "call.kept",
    "recording.started",
    "recording.stopped",
    ...Object.keys(handlers),
  ];
  for (const name of names) {
    source.addEventListener(name, (message) => {
      const data = JSON.parse(message.data);
      if (name.startsWith("call.") || name.startsWith("recording.")) callChanged(name, data);
      else handlers[name](data);
      render();
    });
  }
}

async function start() {
  const response = await fetch(`/status/state?${credentials()}`, { cache: "no-store" });
  if (!response.ok) {
    let reason = `HTTP ${response.status}`;
    try {
      reason = (await response.json()).error || reason;
    } catch (ignored) {
      // not JSON: the status line says enough
    }
    showFeed("closed", `Refused: ${reason}`);
    return;
  }
  const state = await response.json();
  applyState(state);
  listen(state.lastEventId);
}

start().catch((error) => showFeed("closed", `Could not load the state: ${error}`));
