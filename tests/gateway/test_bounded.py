"""The byte-bounded memo: client-chosen keys cannot grow it past its budget."""

from __future__ import annotations

import sys

import pytest

from gateway.bounded import ByteBoundedDict
from gateway.calls import MAX_LAST_ENDED_BYTES, CallTracker


def _exact_size(memo: ByteBoundedDict, overhead: int) -> int:
    return sum(sys.getsizeof(key) + overhead for key in memo)


def test_large_keys_are_forgotten_oldest_first_within_the_budget():
    memo: ByteBoundedDict[str, int] = ByteBoundedDict(max_bytes=1_000_000, entry_overhead_bytes=100)
    for index in range(1_000):
        memo[f"{index:06d}" + "x" * 100_000] = index
    assert memo.size_bytes <= 1_000_000
    assert memo.size_bytes == _exact_size(memo, 100)
    assert [value for value in memo.values()] == list(range(1_000 - len(memo), 1_000))  # the newest stay


def test_rewriting_a_key_keeps_it_and_counts_it_once():
    memo: ByteBoundedDict[str, int] = ByteBoundedDict(max_bytes=3 * (sys.getsizeof("a") + 10), entry_overhead_bytes=10)
    memo["a"], memo["b"], memo["c"] = 1, 2, 3
    memo["a"] = 4  # now the most recent
    memo["d"] = 5
    assert list(memo) == ["c", "a", "d"]
    assert memo.size_bytes == _exact_size(memo, 10)


@pytest.mark.parametrize("remove", ["del", "pop", "popitem", "clear"])
def test_every_way_of_removing_gives_the_bytes_back(remove):
    memo: ByteBoundedDict[str, int] = ByteBoundedDict(max_bytes=10_000, entry_overhead_bytes=10)
    for index in range(5):
        memo[str(index)] = index
    if remove == "del":
        del memo["2"]
    elif remove == "pop":
        memo.pop("2")
        memo.pop("absent", None)
    elif remove == "popitem":
        memo.popitem(last=False)
    else:
        memo.clear()
    assert memo.size_bytes == _exact_size(memo, 10)


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError):
        ByteBoundedDict(max_bytes=0)


async def test_last_lookups_of_huge_numbers_stay_within_the_memo_budget(store):
    tracker = CallTracker(store, ())
    for index in range(200):
        assert await tracker.last_calls_of(f"{index:04d}" + "9" * 100_000) == []
    memo = tracker._last_ended.by_number  # the memo itself: its accounting is what bounds the process
    assert isinstance(memo, ByteBoundedDict) and memo.max_bytes == MAX_LAST_ENDED_BYTES
    assert memo.size_bytes <= MAX_LAST_ENDED_BYTES
