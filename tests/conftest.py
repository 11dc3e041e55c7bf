import sys
from pathlib import Path

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
