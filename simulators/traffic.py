"""One seeded traffic model for both simulators: which calls a site makes, when, and how they go.

Long for a reason: the traffic model and the YAML scenario files that pin a plan down are two views of one PlannedCall.

The model plans calls (`PlannedCall`); the site (simulators/site.py) plays a plan through the trunk
recorder simulator (live CALL events for calls on recorded extensions) and, when each call ends,
hands the PBX simulator a `CompletedCall` to print as that PBX's record(s). Both simulators read the
same plan and the same clock, so they agree about every call, as a real PBX and recorder would.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

DIRECTION_IN = "in"
DIRECTION_OUT = "out"
DIRECTION_INTERNAL = "internal"
DIRECTIONS = (DIRECTION_IN, DIRECTION_OUT, DIRECTION_INTERNAL)


@dataclass(frozen=True)
class PlannedCall:
    """One call of a plan: when it starts (seconds after the plan starts, in site time) and how it goes."""

    at_s: float
    direction: str  # DIRECTION_IN | DIRECTION_OUT | DIRECTION_INTERNAL
    extension: str  # the internal party: answers (in), dials (out, internal)
    other: str  # the caller's number (in), the dialled digits (out), the called extension (internal)
    ring_s: float  # seizure → answer; for an unanswered call, seizure → the caller gave up
    talk_s: float = 0.0  # connected seconds (of the first party when transferred); 0: not answered
    transfer_to: str | None = None  # answered, then transferred to this extension ...
    transfer_talk_s: float = 0.0  # ... which talks this much longer
    account: str | None = None  # account code entered, if any
    caller_name: str | None = None  # the name the PBX shows for the external party, if any

    @property
    def answered(self) -> bool:
        return self.talk_s > 0

    @property
    def length_s(self) -> float:
        """Seizure to release, all segments."""
        return self.ring_s + self.talk_s + (self.transfer_talk_s if self.transfer_to else 0.0)


@dataclass(frozen=True)
class CompletedCall:
    """A planned call as it happened on the site's clock: what the PBX prints its record(s) from."""

    plan: PlannedCall
    pbx_call_id: int  # the PBX's own call id (the API's platformCallID), unique per PBX
    start: datetime  # seizure, timezone-aware UTC
    trunk: str  # the trunk/line the external party came in on or went out on ("" for internal calls)


# ---- the seeded traffic model

# A small office behind one E1: thirty extensions, 8856–8860 being the demo configuration's recorded ones.
DEFAULT_EXTENSIONS: tuple[str, ...] = tuple(str(number) for number in range(8850, 8880))
DEFAULT_CALLS_PER_MINUTE = 20.0
DEFAULT_INBOUND_SHARE = 0.5
DEFAULT_OUTBOUND_SHARE = 0.3  # internal calls are the rest
DEFAULT_NO_ANSWER_SHARE = 0.15
DEFAULT_TRANSFER_SHARE = 0.05
DEFAULT_ACCOUNT_SHARE = 0.1
DEFAULT_CALLER_NAME_SHARE = 0.4
# busy_hours without a start_hour: the plan starts as the working day does, so the demo is busy at once.
DEFAULT_START_HOUR = 9.0
# Rate multiplier per hour of day (0–23) when busy_hours is on: calls_per_minute is the rate of the busy
# hours 9–12 and 14–17; lunch is quieter, the evening and night nearly silent.
DEFAULT_HOUR_PROFILE: tuple[float, ...] = (
    0.02,
    0.02,
    0.02,
    0.02,
    0.02,
    0.02,
    0.05,
    0.15,  # 00–07
    0.5,
    1.0,
    1.0,
    1.0,
    0.6,
    0.6,
    1.0,
    1.0,  # 08–15
    1.0,
    0.5,
    0.2,
    0.1,
    0.05,
    0.05,
    0.02,
    0.02,  # 16–23
)
HOURS_PER_DAY = 24
# Talk time: log-normal around a median (most calls short, a few long), cut to sane bounds. Whole seconds,
# as a PBX reports them, so records and plan agree exactly.
TALK_MEDIAN_S = 30.0  # with the defaults: ~15 erlangs on 30 extensions, so few callers find everyone busy
TALK_SIGMA = 0.8
TALK_BOUNDS_S = (3.0, 1800.0)
TRANSFER_TALK_MEDIAN_S = 60.0
# Ring before answer (log-normal, a few seconds), and how long an unanswered caller waits before giving up.
RING_MEDIAN_S = 4.0
RING_SIGMA = 0.5
RING_BOUNDS_S = (1.0, 30.0)
GIVE_UP_BOUNDS_S = (5.0, 40.0)
# A pinned extension's calls: each this share shorter or longer than the pinned length, after a short ring.
PINNED_TALK_SPREAD = 0.1
PINNED_RING_S = 2.0
# Arrival times are kept to the millisecond: the recorder's ts= resolution, and scenario files stay readable.
AT_DECIMALS = 3
ACCOUNT_CODE_RANGE = (100, 1000)
# Names the PBX shows for external parties. No commas (IP Office CSV has no quoting) and some markup and
# accents, so that every output of the gateway is seen to escape what came from outside.
CALLER_NAMES = (
    "ACME <b>Ltd</b>",
    "Joe Bloggs",
    "John Smith",
    "Kovács Éva",
    "O'Brien & Sons",
    "Müller GmbH",
    "<script>x</script>",
    "Jane Doe",
    "Nagy Péter",
    "Contoso Support",
)


class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message names the file, the call and the key."""


def _check_share(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a share between 0 and 1, got {value!r}")
    return float(value)


def _bounded_lognormal(rng: random.Random, median_s: float, sigma: float, bounds_s: tuple[float, float]) -> float:
    low, high = bounds_s
    return float(min(high, max(low, round(rng.lognormvariate(math.log(median_s), sigma)))))


class TrafficModel:
    """Seeded, reproducible traffic for a site: who calls whom, when, and how each call goes.

    Arrivals are Poisson at `calls_per_minute` (with `busy_hours`, scaled per hour of day by
    `hour_profile` from `start_hour` on). Each arrival is inbound, outbound or internal by the shares
    given; it is answered unless it falls in `no_answer_share`; talk and ring times are log-normal and
    bounded; `transfer_share` of answered external calls on `transfer_extensions` are transferred to
    another of them; some carry an account code or a caller name. An extension has one call at a time
    (counting transfer targets and the called side of internal calls): an arrival for a busy extension
    goes to a free one, and one that finds every extension busy waits for the first to free and is then
    an unanswered call there (the caller gave up) — or is lost when the caller's patience ends first.
    `pinned` extensions never take random calls: they carry back-to-back answered calls of about the
    given length, so one of their calls is always in progress (the demo's API examples need one).

    The same seed gives the same calls; `calls()` starts over from the seed each time it is called.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        calls_per_minute: float = DEFAULT_CALLS_PER_MINUTE,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        busy_hours: bool = False,
        start_hour: float | None = None,
        hour_profile: Sequence[float] = DEFAULT_HOUR_PROFILE,
        inbound_share: float = DEFAULT_INBOUND_SHARE,
        outbound_share: float = DEFAULT_OUTBOUND_SHARE,
        no_answer_share: float = DEFAULT_NO_ANSWER_SHARE,
        transfer_share: float = DEFAULT_TRANSFER_SHARE,
        account_share: float = DEFAULT_ACCOUNT_SHARE,
        caller_name_share: float = DEFAULT_CALLER_NAME_SHARE,
        talk_median_s: float = TALK_MEDIAN_S,
        transfer_extensions: Iterable[str] | None = None,
        pinned: Mapping[str, float] | None = None,
    ) -> None:
        if seed is None:  # a run without a seed can still be replayed: the drawn one is kept in `seed`
            seed = random.SystemRandom().randrange(2**32)
        self.seed = seed
        if isinstance(calls_per_minute, bool) or not calls_per_minute >= 0:
            raise ValueError(f"calls_per_minute must be 0 or more, got {calls_per_minute!r}")
        self.calls_per_minute = float(calls_per_minute)
        self.extensions = tuple(str(extension) for extension in extensions)
        if len(set(self.extensions)) != len(self.extensions):
            raise ValueError("extensions must not repeat")
        self.pinned = {str(extension): float(length_s) for extension, length_s in (pinned or {}).items()}
        for extension, length_s in self.pinned.items():
            if not length_s > PINNED_RING_S:
                raise ValueError(
                    f"pinned extension {extension}: a call length of more than {PINNED_RING_S} s is needed"
                )
        self.inbound_share = _check_share("inbound_share", inbound_share)
        self.outbound_share = _check_share("outbound_share", outbound_share)
        if self.inbound_share + self.outbound_share > 1.0 + 1e-9:
            raise ValueError("inbound_share + outbound_share must not exceed 1 (internal calls are the rest)")
        self.no_answer_share = _check_share("no_answer_share", no_answer_share)
        self.transfer_share = _check_share("transfer_share", transfer_share)
        self.account_share = _check_share("account_share", account_share)
        self.caller_name_share = _check_share("caller_name_share", caller_name_share)
        if not talk_median_s > 0:
            raise ValueError("talk_median_s must be positive")
        self.talk_median_s = float(talk_median_s)
        self.busy_hours = busy_hours
        self.start_hour = float(DEFAULT_START_HOUR if start_hour is None else start_hour)
        self.hour_profile = tuple(float(multiplier) for multiplier in hour_profile)
        if len(self.hour_profile) != HOURS_PER_DAY or min(self.hour_profile) < 0 or max(self.hour_profile) <= 0:
            raise ValueError(f"hour_profile needs {HOURS_PER_DAY} multipliers ≥ 0, not all 0")
        # Random calls go to the extensions that are not pinned; transfers only among transfer_extensions.
        self.free_extensions = tuple(extension for extension in self.extensions if extension not in self.pinned)
        wanted = self.extensions if transfer_extensions is None else tuple(str(e) for e in transfer_extensions)
        self.transfer_extensions = frozenset(wanted) & frozenset(self.free_extensions)
        internal_share = 1.0 - self.inbound_share - self.outbound_share
        if self.calls_per_minute > 0:
            if not self.free_extensions:
                raise ValueError("random traffic needs at least one extension that is not pinned")
            if internal_share > 1e-9 and len(self.free_extensions) < 2:
                raise ValueError("internal calls need at least two extensions that are not pinned")

    # ---- public

    def calls(self) -> Iterator[PlannedCall]:
        """The endless plan (finite only without traffic and pins), in `at_s` order; a new pass each call."""
        return _Planner(self).calls()

    def take(self, count: int) -> list[PlannedCall]:
        """The first `count` calls of the plan."""
        return list(itertools.islice(self.calls(), count))

    def plan(self, duration_s: float) -> list[PlannedCall]:
        """The calls that start within the first `duration_s` seconds (they may end after it)."""
        return list(itertools.takewhile(lambda call: call.at_s < duration_s, self.calls()))

    def rate_multiplier(self, at_s: float) -> float:
        """The arrival rate's multiplier `at_s` seconds into the plan (1.0 without busy hours)."""
        if not self.busy_hours:
            return 1.0
        hour = int((self.start_hour + at_s / 3600.0) % HOURS_PER_DAY)
        return self.hour_profile[hour]


class _Planner:
    """One pass over a model's plan: the random streams and which extension is busy until when."""

    def __init__(self, model: TrafficModel) -> None:
        self.model = model
        seeds = random.Random(model.seed)
        # Separate streams, so pinned calls do not shift the random traffic (and the other way round).
        self.arrival_rng = random.Random(seeds.getrandbits(64))
        self.call_rng = random.Random(seeds.getrandbits(64))
        self.pinned_rng = random.Random(seeds.getrandbits(64))
        self.busy_until_s: dict[str, float] = {extension: 0.0 for extension in model.free_extensions}
        self.sequence = itertools.count()

    def calls(self) -> Iterator[PlannedCall]:
        # Every arrival makes a call at its own time or later, so a planned call can be handed out as soon
        # as the next arrival is no earlier than it.
        ready: list[tuple[float, int, PlannedCall]] = []
        for extension in sorted(self.model.pinned):
            self._push(ready, self._pinned_call(extension, 0.0))
        arrivals = self._arrivals()
        next_arrival_s = next(arrivals)
        while ready or next_arrival_s != math.inf:
            if ready and ready[0][0] <= next_arrival_s:
                _, _, call = heapq.heappop(ready)
                if call.extension in self.model.pinned:
                    self._push(ready, self._pinned_call(call.extension, round(call.at_s + call.length_s, AT_DECIMALS)))
                yield call
            else:
                arrived = self._arrival(next_arrival_s)
                if arrived is not None:
                    self._push(ready, arrived)
                next_arrival_s = next(arrivals)

    def _push(self, ready: list[tuple[float, int, PlannedCall]], call: PlannedCall) -> None:
        heapq.heappush(ready, (call.at_s, next(self.sequence), call))

    def _arrivals(self) -> Iterator[float]:
        """Arrival times: a Poisson process thinned by the hour's multiplier (non-homogeneous Poisson)."""
        model = self.model
        if model.calls_per_minute <= 0:
            while True:
                yield math.inf
        peak = max(model.hour_profile) if model.busy_hours else 1.0
        rate_per_s = model.calls_per_minute / 60.0 * peak
        at_s = 0.0
        while True:
            at_s += self.arrival_rng.expovariate(rate_per_s)
            if self.arrival_rng.random() * peak < model.rate_multiplier(at_s):
                yield round(at_s, AT_DECIMALS)

    def _pinned_call(self, extension: str, at_s: float) -> PlannedCall:
        rng = self.pinned_rng
        length_s = self.model.pinned[extension]
        talk_s = float(
            max(1, round(length_s * rng.uniform(1 - PINNED_TALK_SPREAD, 1 + PINNED_TALK_SPREAD) - PINNED_RING_S))
        )
        direction = DIRECTION_IN if rng.random() < 0.5 else DIRECTION_OUT
        return PlannedCall(at_s, direction, extension, _external_number(rng, direction), PINNED_RING_S, talk_s)

    def _free(self, at_s: float, candidates: Iterable[str]) -> list[str]:
        return [extension for extension in candidates if self.busy_until_s[extension] <= at_s]

    def _arrival(self, arrival_s: float) -> PlannedCall | None:
        model, rng = self.model, self.call_rng
        draw = rng.random()
        direction = (
            DIRECTION_IN
            if draw < model.inbound_share
            else DIRECTION_OUT
            if draw < model.inbound_share + model.outbound_share
            else DIRECTION_INTERNAL
        )
        answered = rng.random() >= model.no_answer_share
        wanted = rng.choice(model.free_extensions)  # who the caller asked for / who picked up the phone
        parties_needed = 2 if direction == DIRECTION_INTERNAL else 1
        at_s = arrival_s
        free = self._free(at_s, model.free_extensions)
        give_up_s = None
        if len(free) < parties_needed:
            # Everyone is busy: the caller waits (queued, or redialling) for an extension to free, where the call
            # rings unanswered until the caller's patience is over; a caller whose patience ends first is lost.
            patience_s = round(rng.uniform(*GIVE_UP_BOUNDS_S))
            at_s = max(arrival_s, sorted(self.busy_until_s.values())[parties_needed - 1])
            if at_s + RING_BOUNDS_S[0] > arrival_s + patience_s:
                return None
            free = self._free(at_s, model.free_extensions)
            answered = False
            give_up_s = float(max(RING_BOUNDS_S[0], math.floor(arrival_s + patience_s - at_s)))
        extension = wanted if wanted in free else rng.choice(free)
        if direction == DIRECTION_INTERNAL:
            other = rng.choice([candidate for candidate in free if candidate != extension])
        else:
            other = _external_number(rng, direction)
        if answered:
            ring_s = _bounded_lognormal(rng, RING_MEDIAN_S, RING_SIGMA, RING_BOUNDS_S)
            talk_s = _bounded_lognormal(rng, model.talk_median_s, TALK_SIGMA, TALK_BOUNDS_S)
        else:
            ring_s, talk_s = give_up_s or float(round(rng.uniform(*GIVE_UP_BOUNDS_S))), 0.0
        transfer_to, transfer_talk_s = None, 0.0
        if (
            answered
            and direction != DIRECTION_INTERNAL
            and extension in model.transfer_extensions
            and rng.random() < model.transfer_share
        ):
            transfer_at_s = at_s + ring_s + talk_s
            targets = sorted(self._free(transfer_at_s, model.transfer_extensions - {extension}))
            if targets:
                transfer_to = rng.choice(targets)
                transfer_talk_s = _bounded_lognormal(rng, TRANSFER_TALK_MEDIAN_S, TALK_SIGMA, TALK_BOUNDS_S)
        account = caller_name = None
        if direction != DIRECTION_INTERNAL:
            if rng.random() < model.account_share:
                account = str(rng.randrange(*ACCOUNT_CODE_RANGE))
            if rng.random() < model.caller_name_share:
                caller_name = rng.choice(CALLER_NAMES)
        call = PlannedCall(
            at_s, direction, extension, other, ring_s, talk_s, transfer_to, transfer_talk_s, account, caller_name
        )
        end_s = round(at_s + call.length_s, AT_DECIMALS)  # kept to the ms like at_s, so they compare exactly
        self.busy_until_s[extension] = end_s
        if direction == DIRECTION_INTERNAL:
            self.busy_until_s[other] = end_s
        if transfer_to is not None:
            self.busy_until_s[transfer_to] = end_s
        return call


def _external_number(rng: random.Random, direction: str) -> str:
    """A caller's number (inbound) or dialled digits (outbound): mostly national, some mobile, some abroad."""
    kind = rng.random()
    if kind < 0.6:
        return f"0{rng.randrange(10**9, 10**10)}"  # national, area code + subscriber: 01707392200
    if kind < 0.85:
        return f"07{rng.randrange(10**8, 10**9)}"  # mobile
    prefix = "00" if direction == DIRECTION_OUT else "+"
    return f"{prefix}{rng.choice(('44', '36', '49', '1'))}{rng.randrange(10**8, 10**9)}"


# ---- scenario files

SCENARIO_CALLS = "calls"
SCENARIO_DESCRIPTION = "description"
SCENARIO_TOP_KEYS = (SCENARIO_CALLS, SCENARIO_DESCRIPTION)
# Scenario key → PlannedCall field; the first five are required.
SCENARIO_KEYS = {
    "at": "at_s",
    "direction": "direction",
    "extension": "extension",
    "other": "other",
    "ring": "ring_s",
    "talk": "talk_s",
    "transfer_to": "transfer_to",
    "transfer_talk": "transfer_talk_s",
    "account": "account",
    "caller_name": "caller_name",
}
SCENARIO_REQUIRED = ("at", "direction", "extension", "other", "ring")
SCENARIO_NUMBER_KEYS = ("at", "ring", "talk", "transfer_talk")
SCENARIO_TEXT_KEYS = ("extension", "other", "transfer_to", "account", "caller_name")


def load_scenario(path: str | Path) -> list[PlannedCall]:
    """A scenario file's calls, sorted by `at` (stable). Raises ScenarioError naming file, line, call and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{path}:{where} not valid YAML: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a mapping with a `{SCENARIO_CALLS}:` list at the top")
    unknown = [key for key in data if key not in SCENARIO_TOP_KEYS]
    if unknown:
        raise ScenarioError(f"{path}: unknown top-level key {unknown[0]!r} (known: {', '.join(SCENARIO_TOP_KEYS)})")
    entries = data.get(SCENARIO_CALLS)
    if not isinstance(entries, list):
        raise ScenarioError(f"{path}: `{SCENARIO_CALLS}` must be a list of calls")
    nodes = _call_nodes(root)
    calls = []
    for index, entry in enumerate(entries):
        node = nodes[index] if index < len(nodes) else None
        calls.append(_scenario_call(path, index, entry, node))
    return sorted(calls, key=lambda call: call.at_s)


def _call_nodes(root: yaml.Node | None) -> list[yaml.Node]:
    """The YAML nodes of the calls (for line numbers in errors)."""
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == SCENARIO_CALLS and isinstance(value, yaml.SequenceNode):
                return list(value.value)
    return []


def _line_of(node: yaml.Node | None, key: str | None = None) -> int | None:
    if node is None:
        return None
    if key is not None and isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if key_node.value == key:
                return key_node.start_mark.line + 1
    return node.start_mark.line + 1


def _scenario_call(path: Path, index: int, entry: Any, node: yaml.Node | None) -> PlannedCall:
    def fail(problem: str, key: str | None = None) -> ScenarioError:
        line = _line_of(node, key)
        where = f"{path}" + (f" line {line}" if line else "") + f": call {index}"
        return ScenarioError(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")

    if not isinstance(entry, dict):
        raise fail('a call is a mapping like {at: 0, direction: in, extension: "8857", other: "0170…", ring: 3}')
    for key in entry:
        if key not in SCENARIO_KEYS:
            raise fail(f"unknown key (known: {', '.join(SCENARIO_KEYS)})", str(key))
    for key in SCENARIO_REQUIRED:
        if key not in entry:
            raise fail("missing", key)
    values: dict[str, Any] = {}
    for key, value in entry.items():
        if value is None and key not in SCENARIO_REQUIRED:
            continue
        if key in SCENARIO_NUMBER_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise fail(f"must be a number of seconds, 0 or more, not {value!r}", key)
            value = float(value)
        elif key in SCENARIO_TEXT_KEYS:
            if not isinstance(value, str) or not value:
                raise fail(f'must be a non-empty string (quote numbers: "{value}"), not {value!r}', key)
        elif key == "direction" and value not in DIRECTIONS:
            raise fail(f"must be one of {', '.join(DIRECTIONS)}, not {value!r}", key)
        values[SCENARIO_KEYS[key]] = value
    if values.get("transfer_to") is not None:
        if values.get("talk_s", 0.0) <= 0:
            raise fail("a transferred call must be answered first (talk > 0)", "transfer_to")
        if values["transfer_to"] == values["extension"]:
            raise fail("cannot transfer a call to its own extension", "transfer_to")
    elif values.get("transfer_talk_s"):
        raise fail("needs transfer_to", "transfer_talk")
    if values["direction"] == DIRECTION_INTERNAL and values["other"] == values["extension"]:
        raise fail("an internal call is between two different extensions", "other")
    return PlannedCall(**values)


class _Quoted(str):
    """A scenario string written quoted: numbers like 01707392200 must stay text for every YAML reader."""


class _FlowCall(dict[str, Any]):
    """A scenario call written on one line, like the hand-written files."""


class _ScenarioDumper(yaml.SafeDumper):
    pass


_ScenarioDumper.add_representer(
    _Quoted, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style='"')
)
_ScenarioDumper.add_representer(
    _FlowCall, lambda dumper, value: dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=True)
)


def scenario_entry(call: PlannedCall) -> dict[str, Any]:
    """A planned call as a scenario mapping: required keys always, the others only when set."""

    def number(value: float) -> float | int:
        return int(value) if float(value).is_integer() else value

    entry: dict[str, Any] = {
        "at": number(call.at_s),
        "direction": call.direction,
        "extension": call.extension,
        "other": call.other,
        "ring": number(call.ring_s),
        "talk": number(call.talk_s),
    }
    if call.transfer_to is not None:
        entry["transfer_to"] = call.transfer_to
        entry["transfer_talk"] = number(call.transfer_talk_s)
    if call.account is not None:
        entry["account"] = call.account
    if call.caller_name is not None:
        entry["caller_name"] = call.caller_name
    return entry


def dump_scenario(calls: Iterable[PlannedCall], path: str | Path, *, description: str | None = None) -> None:
    """Write calls as a scenario file (one flow mapping per call) that `load_scenario` reads back equal."""
    document: dict[str, Any] = {}
    if description:
        document[SCENARIO_DESCRIPTION] = description
    document[SCENARIO_CALLS] = [
        _FlowCall(
            (key, _Quoted(value) if key in SCENARIO_TEXT_KEYS else value) for key, value in scenario_entry(call).items()
        )
        for call in calls
    ]
    text = yaml.dump(
        document, Dumper=_ScenarioDumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=10_000
    )
    Path(path).write_text(text, encoding="utf-8")
