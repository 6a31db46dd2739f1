"""The seeded traffic model and scenario files: reproducible, realistic in aggregate, never impossible."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from simulators.traffic import (
    DIRECTION_IN,
    DIRECTION_INTERNAL,
    DIRECTION_OUT,
    GIVE_UP_BOUNDS_S,
    RING_BOUNDS_S,
    TALK_BOUNDS_S,
    PlannedCall,
    ScenarioError,
    TrafficModel,
    dump_scenario,
    load_scenario,
)

SCENARIOS = Path(__file__).parent / "scenarios"
MANY = 2_000
WIDE_EXTENSIONS = tuple(str(number) for number in range(3000, 3060))  # so that callers rarely find all busy


def occupancy(call: PlannedCall) -> list[tuple[str, float, float]]:
    """Which extension is taken from when to when by a call: its own, the called one, the transfer target."""
    end_s = call.at_s + call.length_s
    taken = [(call.extension, call.at_s, end_s)]
    if call.direction == DIRECTION_INTERNAL:
        taken.append((call.other, call.at_s, end_s))
    if call.transfer_to:
        taken.append((call.transfer_to, call.at_s + call.ring_s + call.talk_s, end_s))
    return taken


def assert_no_overlap(calls: list[PlannedCall]) -> None:
    by_extension: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for call in calls:
        for extension, start_s, end_s in occupancy(call):
            by_extension[extension].append((start_s, end_s))
    for extension, spans in by_extension.items():
        spans.sort()
        for (_, end_s), (next_start_s, _) in zip(spans, spans[1:]):
            assert next_start_s >= end_s - 1e-9, f"{extension}: a call at {next_start_s} while busy until {end_s}"


def test_same_seed_same_plan_and_calls_starts_over():
    model = TrafficModel(seed=42, pinned={"8856": 600.0})
    first = model.take(300)
    assert model.take(300) == first  # calls() starts over from the seed
    assert TrafficModel(seed=42, pinned={"8856": 600.0}).take(300) == first
    assert model.plan(first[99].at_s) == [call for call in first if call.at_s < first[99].at_s]


def test_different_seed_different_plan():
    assert TrafficModel(seed=1).take(50) != TrafficModel(seed=2).take(50)


def test_seedless_model_keeps_its_drawn_seed():
    model = TrafficModel()
    assert TrafficModel(seed=model.seed).take(20) == model.take(20)


def test_calls_are_in_start_order_and_never_overlap_on_an_extension():
    # Busy enough that callers often find their extension taken and some find every one busy.
    model = TrafficModel(seed=7, calls_per_minute=30, extensions=[str(n) for n in range(100, 112)], transfer_share=0.3)
    calls = model.take(MANY)
    assert [call.at_s for call in calls] == sorted(call.at_s for call in calls)
    assert_no_overlap(calls)
    assert sum(not call.answered for call in calls) > 0.2 * MANY  # the all-busy rule did happen
    assert any(call.transfer_to for call in calls)


def test_shares_rates_and_bounds_over_many_calls():
    model = TrafficModel(
        seed=3,
        calls_per_minute=20,
        extensions=WIDE_EXTENSIONS,
        inbound_share=0.5,
        outbound_share=0.3,
        no_answer_share=0.15,
        transfer_share=0.1,
        account_share=0.2,
    )
    calls = model.take(MANY)
    directions = Counter(call.direction for call in calls)
    assert directions[DIRECTION_IN] / MANY == pytest.approx(0.5, abs=0.04)
    assert directions[DIRECTION_OUT] / MANY == pytest.approx(0.3, abs=0.04)
    assert directions[DIRECTION_INTERNAL] / MANY == pytest.approx(0.2, abs=0.04)
    assert sum(not call.answered for call in calls) / MANY == pytest.approx(0.15, abs=0.03)
    answered_external = [call for call in calls if call.answered and call.direction != DIRECTION_INTERNAL]
    transferred = [call for call in answered_external if call.transfer_to]
    assert len(transferred) / len(answered_external) == pytest.approx(0.1, abs=0.03)
    external = [call for call in calls if call.direction != DIRECTION_INTERNAL]
    assert sum(call.account is not None for call in external) / len(external) == pytest.approx(0.2, abs=0.04)
    assert all(
        call.account is None and call.caller_name is None for call in calls if call.direction == DIRECTION_INTERNAL
    )
    # Poisson arrivals at 20 a minute: 2,000 calls take about 100 minutes.
    assert calls[-1].at_s / 60 == pytest.approx(MANY / 20, rel=0.1)
    for call in calls:
        if call.answered:
            assert TALK_BOUNDS_S[0] <= call.talk_s <= TALK_BOUNDS_S[1]
            assert RING_BOUNDS_S[0] <= call.ring_s <= RING_BOUNDS_S[1]
        else:
            assert GIVE_UP_BOUNDS_S[0] <= call.ring_s <= GIVE_UP_BOUNDS_S[1]
            assert call.transfer_to is None
        assert call.ring_s.is_integer() and call.talk_s.is_integer()  # whole seconds, as a PBX reports them
    talk_times = sorted(call.talk_s for call in calls if call.answered)
    assert talk_times[len(talk_times) // 2] == pytest.approx(30, rel=0.2)  # the log-normal's median
    assert_no_overlap(calls)


def test_busy_hours_shape_the_day():
    calls = TrafficModel(seed=5, calls_per_minute=10, extensions=WIDE_EXTENSIONS, busy_hours=True, start_hour=0).plan(
        86_400
    )
    per_hour = Counter(int(call.at_s // 3600) for call in calls)
    assert per_hour[10] == pytest.approx(600, rel=0.2)  # a busy hour runs at calls_per_minute
    assert per_hour[12] < 0.8 * per_hour[10]  # lunch
    assert per_hour[3] < 0.1 * per_hour[10]  # night
    late = TrafficModel(seed=5, calls_per_minute=10, busy_hours=True, start_hour=22.0).plan(3600)
    assert len(late) < 0.2 * per_hour[10]


def test_transfers_only_among_transfer_extensions():
    unmapped = [str(n) for n in range(2001, 2011)]
    model = TrafficModel(
        seed=11, extensions=["8856", "8857", "8858", *unmapped], transfer_extensions=unmapped, transfer_share=0.5
    )
    calls = model.take(MANY)
    transferred = [call for call in calls if call.transfer_to]
    assert len(transferred) > 100
    assert all(call.extension in unmapped and call.transfer_to in unmapped for call in transferred)
    assert all(call.transfer_to != call.extension for call in transferred)


def test_pinned_extension_always_has_a_call_in_progress():
    model = TrafficModel(seed=9, calls_per_minute=30, pinned={"8856": 1800.0})
    calls = model.plan(6 * 3600)
    pinned = [call for call in calls if call.extension == "8856"]
    assert all(call.direction != DIRECTION_INTERNAL or call.other != "8856" for call in calls)
    assert not any(call.transfer_to == "8856" for call in calls)
    assert pinned[0].at_s == 0
    for previous, following in zip(pinned, pinned[1:]):
        assert following.at_s == pytest.approx(previous.at_s + previous.length_s, abs=1e-6)  # back to back
    assert all(call.answered and 1600 <= call.length_s <= 2000 for call in pinned)
    assert all(call.direction in (DIRECTION_IN, DIRECTION_OUT) for call in pinned)
    assert len(pinned) >= 6 * 3600 / 2000


def test_only_pinned_calls_without_traffic():
    calls = TrafficModel(seed=1, calls_per_minute=0, pinned={"8856": 100.0, "8857": 50.0}).plan(1000)
    assert {call.extension for call in calls} == {"8856", "8857"}
    assert TrafficModel(seed=1, calls_per_minute=0).take(5) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"inbound_share": 0.7, "outbound_share": 0.5}, "must not exceed 1"),
        ({"no_answer_share": 1.5}, "no_answer_share"),
        ({"calls_per_minute": -1}, "calls_per_minute"),
        ({"extensions": ["1", "1"]}, "repeat"),
        ({"extensions": ["1"], "pinned": {"1": 60}}, "not pinned"),
        ({"extensions": ["1"]}, "internal calls need"),
        ({"pinned": {"8856": 1}}, "pinned extension 8856"),
        ({"hour_profile": [1.0] * 23}, "hour_profile"),
    ],
)
def test_bad_model_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TrafficModel(seed=1, **options)


# ---- scenario files


def test_load_scenario_reads_every_key():
    calls = load_scenario(SCENARIOS / "basic.yaml")
    assert len(calls) == 8
    assert calls[0] == PlannedCall(0.0, DIRECTION_IN, "8857", "01707392200", 3.0, 42.0)
    transferred = calls[3]
    assert (transferred.transfer_to, transferred.transfer_talk_s, transferred.account) == ("2004", 15.0, "123")
    assert transferred.caller_name == "ACME <b>Ltd</b>" and transferred.length_s == 37.0
    assert not calls[1].answered and calls[2].direction == DIRECTION_INTERNAL


def test_dump_then_load_gives_the_same_plan(tmp_path):
    plan = TrafficModel(seed=21, transfer_share=0.3, pinned={"8856": 300.0}).take(200)
    assert any(call.transfer_to for call in plan) and any(call.caller_name for call in plan)
    path = tmp_path / "seeded.yaml"
    dump_scenario(plan, path, description="seed 21")
    assert load_scenario(path) == plan
    text = path.read_text(encoding="utf-8")
    assert text.count("\n- {at: ") == len(plan)  # one call a line, like hand-written files
    dump_scenario(plan, tmp_path / "again.yaml", description="seed 21")
    assert (tmp_path / "again.yaml").read_text(encoding="utf-8") == text  # deterministic bytes


def test_scenario_is_sorted_by_start(tmp_path):
    path = tmp_path / "unsorted.yaml"
    path.write_text(
        "calls:\n"
        '  - {at: 9, direction: in, extension: "1", other: "0123", ring: 1}\n'
        '  - {at: 2, direction: out, extension: "2", other: "0456", ring: 1, talk: 5}\n'
    )
    assert [call.at_s for call in load_scenario(path)] == [2.0, 9.0]


GOOD = '{at: 0, direction: in, extension: "8857", other: "0170", ring: 3, talk: 4}'


@pytest.mark.parametrize(
    ("second_call", "key", "problem"),
    [
        ('{direction: in, extension: "8857", other: "0170", ring: 3}', "at", "missing"),
        ('{at: 1, direction: in, extension: "8857", other: "0170", ring: 3, colour: red}', "colour", "unknown key"),
        ('{at: 1, direction: in, extension: 8857, other: "0170", ring: 3}', "extension", "quote numbers"),
        ('{at: 1, direction: sideways, extension: "8857", other: "0170", ring: 3}', "direction", "one of"),
        ('{at: -1, direction: in, extension: "8857", other: "0170", ring: 3}', "at", "0 or more"),
        ('{at: 1, direction: in, extension: "8857", other: "0170", ring: "3"}', "ring", "number of seconds"),
        (
            '{at: 1, direction: in, extension: "8857", other: "0170", ring: 3, transfer_to: "2004"}',
            "transfer_to",
            "answered",
        ),
        (
            '{at: 1, direction: in, extension: "8857", other: "0170", ring: 3, talk: 5, transfer_talk: 5}',
            "transfer_talk",
            "transfer_to",
        ),
        ('{at: 1, direction: internal, extension: "2001", other: "2001", ring: 3}', "other", "two different"),
    ],
)
def test_scenario_errors_name_file_line_call_and_key(tmp_path, second_call, key, problem):
    path = tmp_path / "broken.yaml"
    path.write_text(f"calls:\n  - {GOOD}\n  - {second_call}\n")
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    message = str(raised.value)
    assert message.startswith(f"{path} line 3: call 1: {key}: "), message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("calls: [\n", "not valid YAML"),
        ("- {at: 0}\n", "mapping with a `calls:` list"),
        ("calls: {at: 0}\n", "must be a list"),
        ("calls: []\nspeed: 3\n", "unknown top-level key 'speed'"),
        ("calls:\n  - just a string\n", "call 0: a call is a mapping"),
    ],
)
def test_scenario_file_level_errors(tmp_path, text, problem):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=str(path)) as raised:
        load_scenario(path)
    assert problem in str(raised.value)


def test_missing_scenario_file(tmp_path):
    with pytest.raises(ScenarioError, match="nowhere.yaml: cannot read"):
        load_scenario(tmp_path / "nowhere.yaml")
