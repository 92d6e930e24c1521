"""LLM-as-a-judge: the model scores its own candidates with a rubric prompt, K times each.

Procedure (Yuan et al. 2024, section 2.3): every (prompt, candidate) is rendered with the judge
template, put in the model's chat format as a user turn, and sampled K times. Each judgment is
parsed; a candidate's score is the mean over the judgments that parsed (None when none did, so an
unparsable judge drops the candidate instead of scoring it 0). All judge prompts of a batch go to
ONE `generation.generate` call with `num_samples=K`, and `params.max_new_tokens` bounds the new
tokens of each judgment, never the prompt (a total-length budget is spent on the judge prompt
alone, and no judgment reaches its score).
"""

from collections.abc import Sequence
from typing import Any, Literal

from generation import (
    GenerationStats,
    SamplingParams,
    common_prefix_len,
    encode_chat_prompt,
    generate,
    prompt_budget,
)
from judging.aggregate import CandidateJudgment, JudgingStats, aggregate_judgments
from judging.template import JudgeTemplate

__all__ = ["JudgeError", "judge_rendered", "judge_responses"]


class JudgeError(ValueError):
    """Invalid arguments to `judge_responses` (shape mismatch, num_judgments < 1, bad budget)."""


def judge_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    template: JudgeTemplate,
    num_judgments: int = 3,
    params: SamplingParams,
    stats: JudgingStats | None = None,
    max_prompt_tokens: int | Literal["auto"] | None = "auto",
) -> list[list[CandidateJudgment]]:
    """Judge every candidate response of every prompt with the model itself.

    Args:
        model: a Hugging Face causal LM (the judge; the same model as the policy in self-rewarding).
        tokenizer: its tokenizer (chat template used when it has one).
        prompts: the user prompts, as text.
        candidates: candidate response texts, one list per prompt.
        template: rubric prompt and score format (see `load_template`).
        num_judgments: K, judgments sampled per candidate and averaged.
        params: sampling settings of the judge; `max_new_tokens` bounds each judgment's new tokens.
        stats: accumulates counts, token throughput and the score histogram when given.
        max_prompt_tokens: longest allowed judge prompt. Longer ones get the candidate response cut
            from its end; a candidate whose prompt cannot fit even without its response gets no
            judgments (score None, counted in `stats.too_long_prompts`). "auto": the model's context
            (`config.max_position_embeddings`) minus `params.max_new_tokens`, so that every judgment
            has its full budget to reach the final score line (context - 1 when the context is not
            larger than that); no limit when the model states no context. None: no limit.

    Returns:
        One `CandidateJudgment` per candidate, nested like `candidates`.

    Raises:
        JudgeError: prompts and candidates differ in length, num_judgments < 1, or bad max_prompt_tokens.
        generation.PromptError: a judge prompt does not fit the model (only with max_prompt_tokens=None).
    """
    if len(prompts) != len(candidates):
        raise JudgeError(f"got {len(prompts)} prompts but {len(candidates)} candidate lists; expected one list per prompt")
    if not isinstance(num_judgments, int) or num_judgments < 1:
        raise JudgeError(f"num_judgments must be an integer >= 1, got {num_judgments!r}")
    budget = _prompt_budget(model, params, max_prompt_tokens)
    stats = stats if stats is not None else JudgingStats()
    judge_prompts, slots = _encode_judge_prompts(tokenizer, template, prompts, candidates, budget, stats)
    judged = iter(_judge_encoded(model, tokenizer, judge_prompts, slots, template, num_judgments, params, stats))
    return [[next(judged) for _ in responses] for responses in candidates]


def judge_rendered(
    model: Any,
    tokenizer: Any,
    judge_prompts: Sequence[str],
    *,
    template: JudgeTemplate,
    num_judgments: int,
    params: SamplingParams,
    stats: JudgingStats | None = None,
) -> list[CandidateJudgment]:
    """Judge prompts already rendered with the template (e.g. held-out EFT examples), K times each.

    A prompt that leaves less than `params.max_new_tokens` of the model's context is not judged
    (score None, counted in `stats.too_long_prompts`).
    """
    stats = stats if stats is not None else JudgingStats()
    budget = prompt_budget(model, params.max_new_tokens)
    encoded, slots = [], []
    for text in judge_prompts:
        ids = encode_chat_prompt(tokenizer, text)
        if budget is not None and len(ids) > budget:
            stats.too_long_prompts += 1
            slots.append(None)
        else:
            slots.append(len(encoded))
            encoded.append(ids)
    return _judge_encoded(model, tokenizer, encoded, slots, template, num_judgments, params, stats)


def _judge_encoded(model: Any, tokenizer: Any, judge_prompts: list[list[int]], slots: list[int | None],
                   template: JudgeTemplate, num_judgments: int, params: SamplingParams,
                   stats: JudgingStats) -> list[CandidateJudgment]:
    """Sample K judgments of every encoded judge prompt in one `generate` call; one judgment per slot
    (a None slot was not judgeable and gets an empty judgment)."""
    outputs = []
    if judge_prompts:
        gen_stats = GenerationStats()
        # Every judge prompt starts with the chat header and the rubric: prefill that KV cache once.
        outputs = generate(model, tokenizer, judge_prompts, params, num_samples=num_judgments, stats=gen_stats,
                           shared_prefix_len=common_prefix_len(judge_prompts))
        stats.new_tokens += gen_stats.new_tokens
        stats.seconds += gen_stats.seconds
    judgments = []
    for slot in slots:
        judgment = aggregate_judgments([c.text for c in outputs[slot]] if slot is not None else [], template)
        stats.record(judgment)
        judgments.append(judgment)
    return judgments


def _encode_judge_prompts(
    tokenizer: Any,
    template: JudgeTemplate,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    budget: int | None,
    stats: JudgingStats,
) -> tuple[list[list[int]], list[int | None]]:
    """Flatten (prompt, candidate) into judge prompts, so that one generate call covers the batch.

    Returns the judge prompts and, per candidate in order, its index there (None when unjudgeable).
    """
    judge_prompts: list[list[int]] = []
    slots: list[int | None] = []
    for prompt, responses in zip(prompts, candidates):
        for response in responses:
            ids, truncated = _fit_judge_prompt(tokenizer, template, prompt, response, budget)
            stats.truncated_responses += truncated
            if ids is None:
                stats.too_long_prompts += 1
                slots.append(None)
                continue
            slots.append(len(judge_prompts))
            judge_prompts.append(ids)
            stats.prompt_tokens += len(ids)
            stats.max_prompt_tokens = max(stats.max_prompt_tokens, len(ids))
    return judge_prompts, slots


def _prompt_budget(model: Any, params: SamplingParams, max_prompt_tokens: int | str | None) -> int | None:
    if max_prompt_tokens is None:
        return None
    if max_prompt_tokens == "auto":
        return prompt_budget(model, params.max_new_tokens)
    if isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
        raise JudgeError(f"max_prompt_tokens must be an integer >= 1, 'auto' or None, got {max_prompt_tokens!r}")
    return max_prompt_tokens


def _fit_judge_prompt(
    tokenizer: Any, template: JudgeTemplate, prompt: str, response: str, budget: int | None
) -> tuple[list[int] | None, bool]:
    """Judge prompt ids within `budget` tokens, cutting the response from its end if needed.

    Returns (ids or None when even an empty response does not fit, whether the response was cut).
    """
    ids = encode_chat_prompt(tokenizer, template.render(prompt, response))
    if budget is None or len(ids) <= budget:
        return ids, False
    response_ids = tokenizer.encode(response, add_special_tokens=False)
    keep = len(response_ids) - (len(ids) - budget)
    # Re-tokenising the decoded cut can merge differently, so shrink until it fits (a few rounds).
    for _ in range(8):
        keep = max(0, keep)
        cut = tokenizer.decode(response_ids[:keep], skip_special_tokens=True)
        ids = encode_chat_prompt(tokenizer, template.render(prompt, cut))
        if len(ids) <= budget:
            return ids, True
        if keep == 0:
            break
        keep -= len(ids) - budget
    return None, False
