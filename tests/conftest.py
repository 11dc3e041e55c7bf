import itertools
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# tests/simkit, tests/realkit, ... have no __init__.py, and pytest puts tests/ itself on sys.path
# before importing this file: without the repository root ahead of it, `import simkit` resolves to
# the test folder tests/simkit as an empty namespace package (`from simkit import simulate` then
# fails with "unknown location"). Putting the root first makes every package import the real one.
_ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

# Shared 2-core boxes: a slow first example is load, not a bug.
settings.register_profile("serverlab", deadline=None, max_examples=60)
settings.load_profile("serverlab")


_PROFILE_DIRS = itertools.count()


@pytest.fixture(scope="session")
def _profile_root(tmp_path_factory):
    return tmp_path_factory.mktemp("serverlab-profiles")


@pytest.fixture(autouse=True)
def _no_user_profile(_profile_root, monkeypatch):
    """Tests never read or write the real per-user profile (~/.local/share/serverlab/profiles) nor a
    $SERVERLAB_PROFILE from the shell: each test gets its own empty profile folder (not created until
    written), so a profile one test calibrates never leaks into the next."""
    monkeypatch.setenv("SERVERLAB_PROFILE_DIR", str(_profile_root / f"t{next(_PROFILE_DIRS)}"))
    monkeypatch.delenv("SERVERLAB_PROFILE", raising=False)


def pytest_configure(config):
    # simulate()/analytic() without a profile use the built-in one here (no calibrated profile in the
    # test folders) and say so each time: expected, not a finding. tests/test_profile_rule.py checks it.
    config.addinivalue_line("filterwarnings", "ignore::simkit.profile.UncalibratedProfileWarning")
