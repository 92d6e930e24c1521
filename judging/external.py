"""Scoring candidates with a user's reward function instead of the model's own judgments.

The function is named by a `"package.module:function"` string (the one place the project imports
a component from a dotted path) and must score a batch of pairs:

```python
def my_reward(prompts: list[str], responses: list[str]) -> list[float]:
    ...  # one score per (prompt, response); NaN or None = no score
```

It is called once per `score_with_reward_fn` call, for all candidates of its prompts (the pipeline's
judge step calls it once per chunk of prompts), and its output must be one number per pair:
a (num_candidates,) vector is never reinterpreted as per-class logits (an argmax would collapse
the candidates' scores into one index), and a
non-finite score means "unscored" (None) rather than poisoning the pair selection.
"""

import importlib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from judging.aggregate import CandidateJudgment, JudgingStats

__all__ = ["RewardFn", "RewardFunctionError", "load_reward_fn", "score_with_reward_fn"]

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
_SPEC_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class RewardFunctionError(ValueError):
    """The reward function spec is malformed, cannot be imported, is not callable, or misbehaved."""


def load_reward_fn(spec: str) -> RewardFn:
    """Import a reward function named `"module.path:attribute"`.

    Args:
        spec: module path and attribute path separated by one colon, e.g. `"my_pkg.rewards:score"`.

    Returns:
        The callable, unchanged.

    Raises:
        RewardFunctionError: bad spec, module not importable, attribute missing, or not callable.
    """
    if not isinstance(spec, str) or not _SPEC_RE.match(spec.strip()):
        raise RewardFunctionError(f"reward_fn {spec!r}: expected 'package.module:function' (one colon, Python identifiers)")
    module_name, _, attr_path = spec.strip().partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardFunctionError(f"reward_fn {spec!r}: cannot import module {module_name!r} ({err})") from err
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RewardFunctionError(f"reward_fn {spec!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise RewardFunctionError(f"reward_fn {spec!r}: {attr_path!r} is a {type(target).__name__}, not a callable")
    return target


def score_with_reward_fn(
    fn: RewardFn,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    stats: JudgingStats | None = None,
) -> list[list[CandidateJudgment]]:
    """Score every candidate with `fn` in one call; same output shape as `judge_responses`.

    Args:
        fn: reward function `(prompts, responses) -> scores`, one score per pair.
        prompts: the user prompts.
        candidates: candidate response texts, one list per prompt.
        stats: accumulates counts when given (non-finite scores count as parse failures).

    Returns:
        One `CandidateJudgment(score, [score], [])` per candidate, nested like `candidates`.

    Raises:
        RewardFunctionError: the lengths of prompts and candidates differ, `fn` raised, or its
            output is not one number per pair.
    """
    if len(prompts) != len(candidates):
        raise RewardFunctionError(f"got {len(prompts)} prompts but {len(candidates)} candidate lists")
    flat_prompts = [p for p, responses in zip(prompts, candidates) for _ in responses]
    flat_responses = [r for responses in candidates for r in responses]
    scores = _call(fn, flat_prompts, flat_responses) if flat_responses else []
    stats = stats if stats is not None else JudgingStats()
    flat = iter(scores)
    results = []
    for responses in candidates:
        row = []
        for _ in responses:
            score = next(flat)
            judgment = CandidateJudgment(score=score, scores=[score], judgments=[])
            stats.record(judgment)
            row.append(judgment)
        results.append(row)
    return results


def _call(fn: RewardFn, prompts: list[str], responses: list[str]) -> list[float | None]:
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        raw = fn(list(prompts), list(responses))
    except Exception as err:
        raise RewardFunctionError(f"reward function {name} raised {type(err).__name__}: {err}") from err
    if hasattr(raw, "detach"):  # a torch tensor; judging must not require torch for this path
        raw = raw.detach().cpu().tolist()
    try:
        values = np.asarray(raw, dtype=np.float64)  # None -> NaN, handled below
    except (TypeError, ValueError) as err:
        raise RewardFunctionError(f"reward function {name} must return numbers, got {type(raw).__name__} ({err})") from None
    if values.shape != (len(responses),):
        raise RewardFunctionError(f"reward function {name} returned shape {values.shape}; expected "
                                  f"({len(responses)},): one score per (prompt, response) pair")
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]
