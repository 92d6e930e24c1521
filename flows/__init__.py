"""Prefect flows: the self-rewarding run (`self_rewarding_flow`) and one iteration (`iteration_flow`).

Imported on first use: a launched rank (`python -m flows.launch`) runs steps only and starts
faster without Prefect.
"""

__all__ = ["iteration_flow", "self_rewarding_flow"]


def __getattr__(name: str):
    if name == "iteration_flow":
        from flows.iteration import iteration_flow

        return iteration_flow
    if name == "self_rewarding_flow":
        from flows.run import self_rewarding_flow

        return self_rewarding_flow
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
