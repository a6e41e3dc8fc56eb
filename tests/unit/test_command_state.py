"""The pure parts of command handling: the dedup window and the contiguous commit point."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.commands.dedup import DedupWindow
from bridge.commands.offsets import PartitionOffsets


def test_window_remembers_in_flight_then_result() -> None:
    w: DedupWindow[str] = DedupWindow(window_s=10, max_ids=100)
    assert w.check("a", 0.0) is None
    w.begin("a", 0.0)
    seen = w.check("a", 1.0)
    assert seen is not None
    assert seen.in_flight
    w.finish("a", "applied", 2.0)
    seen = w.check("a", 3.0)
    assert seen is not None
    assert seen.result == "applied"
    with pytest.raises(ValueError, match="already"):
        w.begin("a", 3.0)


def test_window_forgets_after_its_age_but_never_an_in_flight_id() -> None:
    w: DedupWindow[str] = DedupWindow(window_s=10, max_ids=100)
    w.begin("old", 0.0)
    w.begin("done", 1.0)
    w.finish("done", "x", 1.0)
    assert w.check("done", 20.0) is not None  # "old" is still in flight and ahead of it in age order
    w.finish("old", "y", 20.0)
    assert w.check("old", 20.0) is None
    assert w.check("done", 20.0) is None


def test_window_is_bounded_and_counts_what_it_forgot_early() -> None:
    w: DedupWindow[str] = DedupWindow(window_s=100, max_ids=3)
    for i in range(5):
        w.begin(str(i), float(i))
    assert len(w) == 3
    assert w.evicted == 2
    assert w.check("0", 5.0) is None
    assert w.check("4", 5.0) is not None


def test_recovered_result_is_remembered() -> None:
    w: DedupWindow[str] = DedupWindow(window_s=100, max_ids=3)
    w.finish("from-the-bus", "applied", 0.0)
    seen = w.check("from-the-bus", 1.0)
    assert seen is not None
    assert not seen.in_flight


def test_commit_point_moves_only_over_a_contiguous_settled_run() -> None:
    p = PartitionOffsets()
    for offset in (10, 11, 12, 13):
        p.delivered(offset)
    assert p.commit_point() == 10  # nothing settled: the first delivered offset
    p.committed(10)
    assert p.commit_point() is None
    p.settled(12)
    assert p.commit_point() is None  # 10 and 11 are open
    p.settled(10)
    assert p.commit_point() == 11
    p.committed(11)
    p.settled(11)
    assert p.commit_point() == 13
    p.committed(13)
    p.settled(13)
    assert p.commit_point() == 14
    assert p.pending == 0


def test_offsets_refuse_what_was_not_delivered() -> None:
    p = PartitionOffsets()
    p.delivered(5)
    with pytest.raises(ValueError, match="not delivered"):
        p.settled(6)
    assert not p.delivered(4)  # fetched again after a rebalance: not handed over twice
    assert not p.delivered(5)
    assert p.commit_point() == 5


@given(st.permutations(list(range(20))), st.integers(min_value=0, max_value=20))
def test_commit_point_is_the_lowest_unsettled_offset(order: list[int], settle_count: int) -> None:
    p = PartitionOffsets()
    for offset in range(20):
        p.delivered(100 + offset)
    settled = set(order[:settle_count])
    for offset in order[:settle_count]:
        p.settled(100 + offset)
    lowest_open = next((o for o in range(20) if o not in settled), 20)
    assert p.commit_point() == 100 + lowest_open
