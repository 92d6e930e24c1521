"""Self-instruct: few-shot prompt text, task extraction and the generate/filter loop on a real tiny model."""

import random

from generation import (
    PromptFilter,
    PromptPool,
    SamplingParams,
    build_fewshot_prompt,
    extract_task,
    self_instruct,
)
from generation.prompts import FEWSHOT_INSTRUCTION, fit_fewshot

SEEDS = [
    "Write a haiku about rain.",
    "List three uses of salt.",
    "Explain what a prime number is.",
    "Translate good morning into French.",
    "Name two planets with rings.",
]


def test_fewshot_prompt_lists_every_example_and_opens_the_next_task():
    text = build_fewshot_prompt(SEEDS[:3], random.Random(0))
    for seed in SEEDS[:3]:
        assert text.count(seed) == 1
    assert text.startswith(FEWSHOT_INSTRUCTION)
    assert text.endswith("Task 4:")
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("Task")] == [
        "Task 1",
        "Task 2",
        "Task 3",
        "Task 4",
    ]
    assert build_fewshot_prompt(SEEDS[:3], random.Random(0)) == text  # rng fixes the order


def test_extract_task_cuts_at_next_label():
    assert extract_task(" Describe a cat.\nIn detail.\n\nTask 10: other") == "Describe a cat.\nIn detail."
    assert extract_task(" Describe a cat.\nIn detail.", first_line_only=True) == "Describe a cat."
    assert extract_task("no marker here  ") == "no marker here"


def test_self_instruct_accepts_novel_filtered_prompts(tiny):
    # The random tiny model writes byte soup, so the permissive filter only keeps length/duplicate rules.
    rule = PromptFilter(
        min_chars=1, max_chars=500, max_symbol_frac=1.0, max_word_frac=1.0, min_distinct_ngram_frac=0.0
    )
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)
    result = self_instruct(
        tiny.model, tiny.tokenizer, SEEDS, num_prompts=4, shots=2, params=params, max_attempts=5, filters=rule
    )
    assert len(result.prompts) == 4
    # One candidate per missing prompt each round; every candidate is accepted or counted as rejected.
    assert sum(result.rejected.values()) + len(result.prompts) == result.candidates
    pool = PromptPool.of(SEEDS)
    for prompt in result.prompts:  # each is novel w.r.t. the seeds and the earlier accepted prompts
        assert rule.rejection_reason(prompt, pool) is None
        pool.add(prompt)
    assert result.stats.sequences == result.candidates
    again = self_instruct(
        tiny.model, tiny.tokenizer, SEEDS, num_prompts=4, shots=2, params=params, max_attempts=5, filters=rule
    )
    assert again.prompts == result.prompts


def test_self_instruct_gives_up_after_max_attempts_and_counts_reasons(tiny):
    rule = PromptFilter(min_chars=10_000, max_chars=20_000)
    params = SamplingParams(max_new_tokens=4, temperature=1.0)
    result = self_instruct(
        tiny.model, tiny.tokenizer, SEEDS, num_prompts=3, shots=3, params=params, max_attempts=2, filters=rule
    )
    assert result.prompts == []
    assert result.rounds == 2 and result.candidates == 6
    assert sum(result.rejected.values()) == 6
    assert set(result.rejected) <= {"empty", "too_short"}


def test_fewshot_examples_are_dropped_until_the_prompt_fits_the_budget(tiny):
    def fewshot_len(n: int) -> int:
        return len(fit_fewshot(tiny.tokenizer, SEEDS[:n], random.Random(0), True, None))

    assert fewshot_len(1) < fewshot_len(2) < fewshot_len(5)
    ids = fit_fewshot(tiny.tokenizer, list(SEEDS), random.Random(0), True, fewshot_len(2))
    text = tiny.tokenizer.decode(ids)
    assert len(ids) <= fewshot_len(2) and "Task 3:" in text and "Task 4:" not in text  # 2 examples, next label
    assert fit_fewshot(tiny.tokenizer, list(SEEDS), random.Random(0), True, fewshot_len(1) - 1) is None


def test_self_instruct_counts_fewshot_prompts_that_cannot_fit_the_context(tiny):
    # 511 of the 512-token context reserved for the new task: not even a one-example prompt fits.
    params = SamplingParams(max_new_tokens=511, temperature=1.0)
    result = self_instruct(tiny.model, tiny.tokenizer, SEEDS, num_prompts=2, shots=2, params=params, max_attempts=2)
    assert result.prompts == [] and result.candidates == 0 and result.rounds == 2
    assert result.rejected == {"fewshot_too_long": 4}
