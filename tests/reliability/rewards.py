"""Reward functions for outcome tests (`judge.reward_fn: tests.reliability.rewards:<name>`)."""


def no_score(prompts: list[str], responses: list[str]) -> list[float | None]:
    """A judge that never produces a parsable score."""
    return [None] * len(responses)


def constant(prompts: list[str], responses: list[str]) -> list[float]:
    """Every candidate ties: no preference pair can be formed."""
    return [3.0] * len(responses)
