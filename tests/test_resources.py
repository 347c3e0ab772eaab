"""The descriptor budget the inbound listener and the outbound ones share."""

from __future__ import annotations

from fopproxy.resources import FDS_PER_CONNECTION, RESERVED_FDS, share_capacity


def test_bounds_that_fit_are_kept() -> None:
    assert share_capacity([100], 20000) == [100]
    assert share_capacity([100, 100, 100], 20000) == [100, 100, 100]


def test_one_listener_gets_what_the_limit_allows() -> None:
    """ulimit -n 64: (64 - 32) / 2 = 16 connections (the figure the reliability test checks)."""
    assert share_capacity([10000], 64) == [(64 - RESERVED_FDS) // FDS_PER_CONNECTION] == [16]
    assert share_capacity([10000], 20000) == [9984]


def test_listeners_share_the_limit_in_proportion_and_never_exceed_it() -> None:
    assert share_capacity([10000, 10000], 64) == [8, 8]
    assert share_capacity([10000, 10000, 10000], 20000) == [3328, 3328, 3328]
    shares = share_capacity([300, 100], 232)  # budget 100
    assert shares == [75, 25]
    assert sum(share_capacity([10000, 10000, 10000], 100)) <= (100 - RESERVED_FDS) // FDS_PER_CONNECTION


def test_every_listener_keeps_at_least_one() -> None:
    assert share_capacity([10000, 1, 1], 40) == [3, 1, 1]
    assert share_capacity([5, 5], 0) == [1, 1]
