"""realkit: the real servers, the load generator and measure(scenario) -> Result.

`measure` is imported lazily: the servers import realkit.protocol and must not pay for numpy/psutil.
"""

from __future__ import annotations

__all__ = ["measure"]


def __getattr__(name: str):
    if name == "measure":
        from realkit.runner import measure

        return measure
    raise AttributeError(f"module 'realkit' has no attribute {name!r}")
