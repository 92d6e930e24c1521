"""The candidates step: N sampled responses per prompt of a prompts file, and the file they go to.

`candidates.jsonl` holds one `PromptCandidates` row per prompt, in the order of the prompts file::

    {"prompt": str, "prompt_ids": [int], "candidates": [{"token_ids": [int], "text": str, "finished": bool}]}

`prompt_ids` are the chat-rendered prompt (ending with the assistant header), so the pairs built
from this file train on exactly the tokens the responses were sampled after. With an anchor model
(anchored rejection), a row also holds `"anchors"`: responses of that earlier model to the prompt.
"""

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generation.chat import encode_chat_prompt
from generation.decoding import Completion, generate
from generation.jsonl import iter_jsonl, write_jsonl
from generation.next_token import SamplingParams
from generation.prompts import read_prompt_file
from generation.stats import GenerationStats

__all__ = ["CANDIDATES_FILE", "CandidatesSummary", "PromptCandidates", "distinct_share", "read_candidates", "sample_candidates"]

CANDIDATES_FILE = "candidates.jsonl"


@dataclass
class PromptCandidates:
    """One prompt and the responses sampled for it: a row of `candidates.jsonl`."""

    prompt: str
    prompt_ids: list[int]
    candidates: list[Completion]
    anchors: list[Completion] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        row = {"prompt": self.prompt, "prompt_ids": self.prompt_ids, "candidates": [c.to_json() for c in self.candidates]}
        if self.anchors:
            row["anchors"] = [c.to_json() for c in self.anchors]
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "PromptCandidates":
        return cls(row["prompt"], list(row["prompt_ids"]), [Completion.from_json(c) for c in row["candidates"]],
                   [Completion.from_json(c) for c in row.get("anchors", [])])


@dataclass
class CandidatesSummary:
    """What the candidates step reports: sampling throughput and how varied the samples are."""

    stats: GenerationStats
    distinct_share: float | None  # mean over prompts of distinct response texts / samples
    anchor_sequences: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"sequences": self.stats.sequences, "new_tokens": self.stats.new_tokens,
                "tokens_per_second": self.stats.tokens_per_second, "distinct_share": self.distinct_share,
                "anchor_sequences": self.anchor_sequences}


def read_candidates(path: str | os.PathLike) -> Iterator[PromptCandidates]:
    """The rows of a candidates file, one at a time."""
    return (PromptCandidates.from_json(row) for row in iter_jsonl(path))


def distinct_share(samples: Sequence[Sequence[Completion]]) -> float | None:
    """Mean over prompts of the share of distinct texts among its samples (None without samples)."""
    shares = [len({c.text for c in row}) / len(row) for row in samples if row]
    return sum(shares) / len(shares) if shares else None


def sample_candidates(
    model: Any,
    tokenizer: Any,
    prompts_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_samples: int,
    params: SamplingParams,
    anchor_model: Any = None,
    anchor_samples: int = 0,
) -> CandidatesSummary:
    """Sample `num_samples` responses to every prompt of `prompts_file` into `out_dir/candidates.jsonl`.

    Args:
        model: The causal LM that answers (M_t).
        tokenizer: Its tokenizer; prompts are rendered with its chat template.
        prompts_file: A prompts file (`generation.PROMPTS_FILE` format).
        out_dir: Folder to write `CANDIDATES_FILE` into (created).
        num_samples: Responses per prompt.
        params: Sampling settings (one seed for the whole file: the same inputs give the same file).
        anchor_model: An earlier model (same tokenizer) whose `anchor_samples` responses per prompt
            are stored as the row's anchors (anchored rejection, Temporal Self-Rewarding).
        anchor_samples: Responses per prompt from `anchor_model` (0: none).

    Returns:
        Throughput of the sampling and the share of distinct samples.
    """
    texts = read_prompt_file(prompts_file)
    prompt_ids = [encode_chat_prompt(tokenizer, text) for text in texts]
    stats = GenerationStats()
    outputs = generate(model, tokenizer, prompt_ids, params, num_samples, stats)
    anchors: list[list[Completion]] = [[] for _ in texts]
    if anchor_model is not None and anchor_samples:
        anchor_params = dataclasses.replace(params, seed=params.seed + 1)  # its own random stream
        anchors = generate(anchor_model, tokenizer, prompt_ids, anchor_params, anchor_samples)
    rows = (PromptCandidates(*row).to_json() for row in zip(texts, prompt_ids, outputs, anchors, strict=True))
    write_jsonl(Path(out_dir) / CANDIDATES_FILE, rows)
    return CandidatesSummary(stats, distinct_share(outputs), sum(len(a) for a in anchors))
