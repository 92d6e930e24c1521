"""The candidates step: N sampled responses per prompt of a prompts file, and the file they go to.

`candidates.jsonl` holds one `PromptCandidates` row per prompt, in the order of the prompts file::

    {"prompt": str, "prompt_ids": [int], "candidates": [{"token_ids": [int], "text": str, "finished": bool}]}

`prompt_ids` are the chat-rendered prompt (ending with the assistant header), so the pairs built
from this file train on exactly the tokens the responses were sampled after.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generation.chat import encode_chat_prompt
from generation.decoding import Completion, generate
from generation.jsonl import iter_jsonl, write_jsonl
from generation.next_token import SamplingParams
from generation.prompts import read_prompt_file
from generation.stats import GenerationStats

__all__ = ["CANDIDATES_FILE", "PromptCandidates", "read_candidates", "sample_candidates"]

CANDIDATES_FILE = "candidates.jsonl"


@dataclass
class PromptCandidates:
    """One prompt and the responses sampled for it: a row of `candidates.jsonl`."""

    prompt: str
    prompt_ids: list[int]
    candidates: list[Completion]

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "prompt_ids": self.prompt_ids,
                "candidates": [c.to_json() for c in self.candidates]}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "PromptCandidates":
        return cls(row["prompt"], list(row["prompt_ids"]), [Completion.from_json(c) for c in row["candidates"]])


def read_candidates(path: str | os.PathLike) -> Iterator[PromptCandidates]:
    """The rows of a candidates file, one at a time."""
    return (PromptCandidates.from_json(row) for row in iter_jsonl(path))


def sample_candidates(
    model: Any,
    tokenizer: Any,
    prompts_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_samples: int,
    params: SamplingParams,
) -> GenerationStats:
    """Sample `num_samples` responses to every prompt of `prompts_file` into `out_dir/candidates.jsonl`.

    Args:
        model: The causal LM that answers (M_t).
        tokenizer: Its tokenizer; prompts are rendered with its chat template.
        prompts_file: A prompts file (`generation.PROMPTS_FILE` format).
        out_dir: Folder to write `CANDIDATES_FILE` into (created).
        num_samples: Responses per prompt.
        params: Sampling settings (one seed for the whole file: the same inputs give the same file).

    Returns:
        Throughput figures of the sampling.
    """
    texts = read_prompt_file(prompts_file)
    prompt_ids = [encode_chat_prompt(tokenizer, text) for text in texts]
    stats = GenerationStats()
    outputs = generate(model, tokenizer, prompt_ids, params, num_samples, stats)
    rows = (PromptCandidates(text, ids, completions).to_json()
            for text, ids, completions in zip(texts, prompt_ids, outputs, strict=True))
    write_jsonl(Path(out_dir) / CANDIDATES_FILE, rows)
    return stats
