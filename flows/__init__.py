"""Prefect flows: the self-rewarding run (`self_rewarding_flow`) and one iteration (`iteration_flow`)."""

from flows.iteration import iteration_flow
from flows.run import self_rewarding_flow

__all__ = ["iteration_flow", "self_rewarding_flow"]
