"""simkit: the simulated half of serverlab (docs/DESIGN.md §1, §6)."""

from simkit.sim import SimStats, simulate

__all__ = ["SimStats", "simulate"]
