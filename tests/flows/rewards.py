"""An external reward function for flow tests (`judge.reward_fn: tests.flows.rewards:distinct_letters`)."""


def distinct_letters(prompts: list[str], responses: list[str]) -> list[float]:
    """Scores a response by its number of distinct characters: cheap, deterministic, rarely tied."""
    return [float(len(set(r))) for r in responses]
