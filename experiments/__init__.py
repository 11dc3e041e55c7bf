"""Capacity planning and the what-if pipeline. The three questions, as functions:

- `size(clients, ...)`: the fewest cores for N clients under the SLO and budget (SizeAnswer);
- `capacity(frame, slo_p99_s, memory_bytes)`: the largest load each model carries (one row per model);
- `recommend(frame, slo_p99_s, memory_bytes)`: which model to build, with reasons and warnings.

They are loaded on first use, so importing one submodule does not import the others.
"""

from __future__ import annotations

from typing import Any

__all__ = ["size", "SizeAnswer", "capacity", "recommend", "Recommendation", "winner_map", "sweep"]

_HOMES = {"size": "questions", "SizeAnswer": "questions", "capacity": "planning", "recommend": "planning",
          "Recommendation": "planning", "winner_map": "planning", "sweep": "sweep"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'experiments' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"experiments.{_HOMES[name]}"), name)
