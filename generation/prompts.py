"""Prompts of an iteration: self-instruct (few-shot prompts from a pool, sampled, cut and filtered) or a
draw from the pool, and the prompts file the next step reads (`PROMPTS_FILE`: one `{"prompt": text}`
per line)."""

import dataclasses
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from generation.chat import encode_chat_prompt
from generation.decoding import generate, prompt_budget
from generation.filters import PromptFilter, PromptPool
from generation.jsonl import iter_jsonl, write_jsonl
from generation.next_token import SamplingParams
from generation.stats import GenerationStats

# Kept short: a small model's context must hold it, the examples and the new task's token budget.
FEWSHOT_INSTRUCTION = "Write one new task, different from these examples. Give only the task."
TASK_LABEL = "Task {number}:"
PROMPTS_FILE = "prompts.jsonl"
# A generated task ends where the model starts labelling another one (or at EOS).
_NEXT_TASK = re.compile(r"^\s*Task\s*\d+\s*:", flags=re.MULTILINE)


def build_fewshot_prompt(examples: Sequence[str], rng: random.Random) -> str:
    """Few-shot text asking for one new task after listing `examples` in a random order.

    Args:
        examples: Example tasks (e.g. 8 drawn from the seed pool).
        rng: Source of the example order.

    Returns:
        Instruction, numbered example tasks, and an open label for the next task.
    """
    shuffled = list(examples)
    rng.shuffle(shuffled)
    listed = "\n\n".join(f"{TASK_LABEL.format(number=i)} {ex.strip()}" for i, ex in enumerate(shuffled, 1))
    return f"{FEWSHOT_INSTRUCTION}\n\n{listed}\n\n{TASK_LABEL.format(number=len(shuffled) + 1)}"


def fewshot_examples(prompts: Sequence[str], count: int, shots: int, seed: int) -> list[dict[str, str]]:
    """SFT examples that teach the self-instruct skill in exactly the format `self_instruct` uses.

    Each example's prompt is `build_fewshot_prompt` of 1 to `shots` prompts drawn from `prompts`
    (any instruction set, e.g. the IFT prompts) and its response is one more prompt of the set. The
    number of examples varies because `self_instruct` shows fewer when a small context cannot hold
    them all.

    Returns:
        `count` rows `{"prompt": few-shot text, "response": task}`; none when `prompts` has fewer
        than two distinct prompts.
    """
    distinct = sorted(set(prompts))
    if len(distinct) < 2:
        return []
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        *examples, task = rng.sample(distinct, rng.randint(1, min(shots, len(distinct) - 1)) + 1)
        rows.append({"prompt": build_fewshot_prompt(examples, rng), "response": task})
    return rows


def extract_task(generated: str, first_line_only: bool = False) -> str:
    """The new task in a completion: text before the next "Task N:" label, optionally its first line."""
    marker = _NEXT_TASK.search(generated)
    task = generated[: marker.start()] if marker else generated
    task = task.strip()
    if first_line_only:
        task = task.split("\n", 1)[0].strip()
    return task


@dataclass
class GeneratedPrompts:
    """Result of `self_instruct`.

    Attributes:
        prompts: Accepted new prompts, at most `num_prompts`.
        rejected: Rejections by reason ("empty", "too_short", "duplicate", "near_duplicate", ...).
        candidates: Candidates sampled in total.
        rounds: Sampling rounds run.
        stats: Generation throughput of all rounds.
    """

    prompts: list[str] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    candidates: int = 0
    rounds: int = 0
    stats: GenerationStats = field(default_factory=GenerationStats)


def _fewshot_token_ids(tokenizer: Any, text: str, chat: bool) -> list[int]:
    if chat:
        return encode_chat_prompt(tokenizer, text)
    return list(tokenizer.encode(text + " ", add_special_tokens=True))


def fit_fewshot(
    tokenizer: Any, examples: list[str], rng: random.Random, chat: bool, budget: int | None
) -> list[int] | None:
    """Few-shot prompt ids with as many of `examples` as fit in `budget` tokens (None: not even one).

    A small model's context cannot hold many long examples plus the new task's token budget, so
    examples are dropped from the end until the prompt fits.
    """
    for keep in range(len(examples), 0, -1):
        ids = _fewshot_token_ids(tokenizer, build_fewshot_prompt(examples[:keep], rng), chat)
        if budget is None or len(ids) <= budget:
            return ids
    return None


def self_instruct(
    model: Any,
    tokenizer: Any,
    seed_prompts: Sequence[str],
    *,
    num_prompts: int,
    shots: int = 8,
    params: SamplingParams,
    max_attempts: int = 10,
    filters: PromptFilter | None = None,
    chat: bool = True,
    first_line_only: bool = False,
    oversample: float = 1.0,
    avoid: Sequence[str] = (),
) -> GeneratedPrompts:
    """Self-instruct: sample new prompts from few-shot prompts until `num_prompts` pass the filters.

    Each round builds one few-shot prompt per missing prompt (times `oversample`) from `shots` seed
    prompts drawn at random, samples one completion each, cuts it at the next task label and filters
    it against the seeds and everything accepted so far. Round r samples with seed `params.seed + r`.

    Args:
        model: Causal LM used to write prompts.
        tokenizer: Its tokenizer.
        seed_prompts: Example pool (also the novelty reference for filtering).
        num_prompts: Prompts wanted.
        shots: Examples per few-shot prompt (capped by the pool size, and dropped one by one while
            the prompt would leave less than `params.max_new_tokens` of the model's context;
            a prompt that does not fit with one example is counted as "fewshot_too_long").
        params: Sampling settings.
        max_attempts: Maximum sampling rounds.
        filters: Acceptance rules (defaults to `PromptFilter()`).
        chat: Wrap the few-shot text as a chat user turn (else plain continuation text).
        first_line_only: Keep only the first line of each generated task.
        oversample: Candidates per missing prompt in each round.
        avoid: Prompts that must not be generated (e.g. the evaluation prompts): they join the
            novelty pool, so exact and near copies are rejected as duplicates.

    Returns:
        Accepted prompts with rejection counts and throughput figures.
    """
    if not seed_prompts:
        raise ValueError("self_instruct needs at least one seed prompt")
    if num_prompts < 0 or shots < 1 or max_attempts < 1 or oversample <= 0:
        raise ValueError(
            f"invalid settings num_prompts={num_prompts}, shots={shots}, max_attempts={max_attempts}, "
            f"oversample={oversample}; expected num_prompts >= 0, shots >= 1, max_attempts >= 1, oversample > 0"
        )
    rule, pool, result = filters or PromptFilter(), PromptPool.of([*seed_prompts, *avoid]), GeneratedPrompts()
    rng = random.Random(params.seed)
    budget = prompt_budget(model, params.max_new_tokens)
    while len(result.prompts) < num_prompts and result.rounds < max_attempts:
        missing = num_prompts - len(result.prompts)
        token_ids = []
        for _ in range(max(1, round(missing * oversample))):
            examples = rng.sample(list(seed_prompts), min(shots, len(seed_prompts)))
            ids = fit_fewshot(tokenizer, examples, rng, chat, budget)
            if ids is None:
                result.rejected["fewshot_too_long"] += 1
            else:
                token_ids.append(ids)
        round_params = dataclasses.replace(params, seed=params.seed + result.rounds)
        completions = generate(model, tokenizer, token_ids, round_params, stats=result.stats)
        accepted, rejected = rule.apply([extract_task(c[0].text, first_line_only) for c in completions], pool)
        result.prompts.extend(accepted[:missing])
        result.rejected.update(rejected)
        result.candidates += len(completions)
        result.rounds += 1
    return result


def sample_pool(pool: Sequence[str], num_prompts: int, seed: int) -> list[str]:
    """`num_prompts` distinct prompts drawn from `pool` (all of it when it is smaller), seeded."""
    return random.Random(seed).sample(list(pool), min(num_prompts, len(pool)))


def write_prompt_file(path: str | os.PathLike, prompts: Sequence[str]) -> int:
    """Write prompts as `PROMPTS_FILE` rows (`{"prompt": text}`); returns how many."""
    return write_jsonl(path, ({"prompt": p} for p in prompts))


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """The prompts of a file written by `write_prompt_file` (possibly none)."""
    return [row["prompt"] for row in iter_jsonl(path)]
