"""simkit: the simulated half of serverlab (DESIGN §1, §6)."""

from simkit.sim import SimStats, simulate

__all__ = ["SimStats", "simulate"]
