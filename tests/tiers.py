"""The test tiers: every test is exactly one of `unit`, `integration` or `slow` (docs/testing.md).

- unit: in-process only (no binary or other subprocess, no SavedModel reloaded elsewhere, no
  convergence on real MNIST); a few seconds at most.
- integration: the binaries and other subprocesses, SavedModels, real data; under ~30 s each.
- slow: everything longer (convergence runs, fault injection, the documentation's blocks, ...).

A test file says its tier with a module-level `pytestmark = pytest.mark.<tier>`; a test (or a
class, or a `pytest.param(..., marks=...)`) that differs carries its own mark, and the closest
mark wins: the test's own over its class's over the module's. A test with no tier anywhere is
`integration` (DEFAULT), so a new file that knows nothing of the tiers still runs in
`make test-fast` unless it is marked `slow`. Two tiers on one level (`pytestmark = [unit, slow]`,
or a test with both marks) is an error: the test keeps both marks and tests/test_tiers.py fails
naming it.

tests/conftest.py applies `assign` before `-m` selects, so `-m unit`, `-m "not slow"` and so on
see exactly one tier per test.
"""

import pytest

TIERS = ("unit", "integration", "slow")
DEFAULT = "integration"

# config.stash key: {node id: its tier, or the sorted tiers of its conflicting level}.
ASSIGNED = pytest.StashKey[dict]()


def resolve(levels):
    """The tier from the tier marks of each level, the test's own first, then its class's and
    module's -> (tier, conflict): the closest level's one mark; DEFAULT when no level has one;
    (None, [its tiers]) when the closest marked level has more than one."""
    for names in levels:
        found = sorted({name for name in names if name in TIERS})
        if len(found) == 1:
            return found[0], None
        if found:
            return None, found
    return DEFAULT, None


def _levels(item):
    """The mark names of `item` and of each node above it, the item's own first."""
    return [[mark.name for mark in node.own_markers] for node in reversed(item.listchain())]


def assign(items, config):
    """Gives each item exactly one tier mark, its own (see `resolve`), and drops the tier marks
    of the classes and modules above it, so `-m` matches the resolved tier only. Records every
    item's tier in config.stash[ASSIGNED]; an item with a conflict keeps its marks as they are."""
    assigned, resolved = {}, []
    for item in items:
        tier, conflict = resolve(_levels(item))
        assigned[item.nodeid] = tier or conflict
        if tier is not None:
            resolved.append((item, tier))
    config.stash[ASSIGNED] = assigned
    # Second pass: every item is resolved before any parent's marks are dropped, since a module's
    # pytestmark is shared by all its tests.
    for item, tier in resolved:
        for node in item.listchain():
            node.own_markers[:] = [m for m in node.own_markers if m.name not in TIERS]
        item.add_marker(tier)
