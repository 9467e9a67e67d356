"""The tiers (tests/tiers.py): every collected test has exactly one, and the rule that gives it."""

import pytest
import tiers

pytestmark = pytest.mark.unit


def test_every_collected_test_has_exactly_one_tier(request):
    # Every test collected in this run, before `-m` deselected any.
    assigned = request.config.stash[tiers.ASSIGNED]
    bad = {nodeid: tier for nodeid, tier in assigned.items() if tier not in tiers.TIERS}
    assert not bad, f"tests with more than one tier on one level (tests/tiers.py): {bad}"
    assert assigned[request.node.nodeid] == "unit"
    # And what `-m` sees: the selected tests carry their resolved tier and no other.
    for item in request.session.items:
        marks = {mark.name for mark in item.iter_markers()} & set(tiers.TIERS)
        assert marks == {assigned[item.nodeid]}, item.nodeid


def test_the_closest_mark_wins_and_unmarked_is_the_default():
    # Levels are the test's own marks, then its class's, then its module's.
    assert tiers.resolve([["slow", "parametrize"], [], ["unit"]]) == ("slow", None)
    assert tiers.resolve([[], ["integration"], ["unit"]]) == ("integration", None)
    assert tiers.resolve([["skipif"], [], ["unit"]]) == ("unit", None)
    assert tiers.resolve([["parametrize"], []]) == (tiers.DEFAULT, None)
    assert tiers.resolve([]) == (tiers.DEFAULT, None)
    assert tiers.DEFAULT == "integration"


def test_two_tiers_on_one_level_is_a_conflict():
    assert tiers.resolve([["unit", "slow"], ["unit"]]) == (None, ["slow", "unit"])
    assert tiers.resolve([[], ["unit", "integration", "unit"]]) == (None, ["integration", "unit"])
    # A repeated mark is still one tier.
    assert tiers.resolve([["slow", "slow"]]) == ("slow", None)
