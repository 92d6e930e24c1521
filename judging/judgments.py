"""The judge step: `candidates.jsonl` in, `judgments.jsonl` out, one chunk of prompts at a time.

`judgments.jsonl` holds one row per prompt, in the candidates file's order::

    {"candidates": [{"score": float | None, "scores": [float | None], "judgments": [str]}]}

one entry per candidate (and `"anchors"`, one per anchor response, when the candidates file has them). The judge is a callable (`model_judge`: the model judges itself with a
template; `reward_judge`: a user's reward function), so the step is the same for both. Reading the
two files back in lockstep gives the stream of `JudgedPrompt`s that pair building consumes.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice, zip_longest
from pathlib import Path
from typing import Any

from generation import Completion, SamplingParams, iter_jsonl, read_candidates, write_jsonl
from judging.aggregate import CandidateJudgment, JudgingStats
from judging.external import RewardFn, score_with_reward_fn
from judging.judge import judge_responses
from judging.template import JudgeTemplate

__all__ = [
    "JUDGE_CHUNK_PROMPTS",
    "JUDGMENTS_FILE",
    "Judge",
    "JudgedPrompt",
    "judge_candidates",
    "model_judge",
    "read_judged_prompts",
    "reward_judge",
]

JUDGMENTS_FILE = "judgments.jsonl"
# Prompts judged per chunk: bounds the step's memory for any number of prompts. A fixed number,
# never machine-dependent, so a resumed run judges exactly the same chunks.
JUDGE_CHUNK_PROMPTS = 512

# judge(prompts, candidate texts per prompt, chunk index, stats) -> one judgment per candidate
Judge = Callable[[list[str], list[list[str]], int, JudgingStats], list[list[CandidateJudgment]]]


def chunk_seed(seed: int, chunk: int) -> int:
    """Chunk 0 keeps the step's seed; later chunks get their own sampling streams instead of
    replaying chunk 0's random numbers."""
    if chunk == 0:
        return seed
    digest = hashlib.sha256(json.dumps(["judge-chunk", seed, chunk]).encode()).hexdigest()[:20]
    return int(digest, 16) % 2**63


def model_judge(model: Any, tokenizer: Any, template: JudgeTemplate, num_judgments: int,
                params: SamplingParams) -> Judge:
    """The model judges every candidate `num_judgments` times with `template` (`judge_responses`)."""

    def judge(prompts: list[str], texts: list[list[str]], chunk: int, stats: JudgingStats):
        chunk_params = dataclasses.replace(params, seed=chunk_seed(params.seed, chunk))
        return judge_responses(model, tokenizer, prompts, texts, template=template, num_judgments=num_judgments,
                               params=chunk_params, stats=stats)

    return judge


def reward_judge(fn: RewardFn) -> Judge:
    """A user's reward function scores every candidate once (`score_with_reward_fn`)."""

    def judge(prompts: list[str], texts: list[list[str]], chunk: int, stats: JudgingStats):
        return score_with_reward_fn(fn, prompts, texts, stats=stats)

    return judge


def judge_candidates(judge: Judge, candidates_file: str | os.PathLike, out_dir: str | os.PathLike, *,
                     chunk_prompts: int = JUDGE_CHUNK_PROMPTS) -> JudgingStats:
    """Judge every candidate of `candidates_file` into `out_dir/judgments.jsonl`.

    Streamed: the candidates are read and judged `chunk_prompts` prompts at a time (token ids are
    not kept), and each chunk's rows are appended as they come, so memory does not grow with the
    number of prompts.

    Returns:
        Counts over all chunks (judgments, parse failures, score histogram, throughput).
    """
    stats = JudgingStats()

    def rows() -> Iterator[dict]:
        texts_by_prompt = ((row.prompt, [c.text for c in row.candidates + row.anchors], len(row.candidates))
                           for row in read_candidates(candidates_file))
        chunk = 0
        while batch := list(islice(texts_by_prompt, chunk_prompts)):
            judged = judge([p for p, _, _ in batch], [t for _, t, _ in batch], chunk, stats)
            for (_, _, num_candidates), row in zip(batch, judged, strict=True):
                anchors = {"anchors": [j.to_json() for j in row[num_candidates:]]} if len(row) > num_candidates else {}
                yield {"candidates": [j.to_json() for j in row[:num_candidates]], **anchors}
            chunk += 1

    write_jsonl(Path(out_dir) / JUDGMENTS_FILE, rows())
    return stats


@dataclass
class JudgedPrompt:
    """A prompt, its candidates and their judgments: what pair selection reads for one prompt.

    Raises:
        ValueError: the numbers of candidates and judgments differ.
    """

    prompt: str
    prompt_ids: list[int]
    candidates: list[Completion]
    judgments: list[CandidateJudgment]
    anchors: list[Completion] = field(default_factory=list)
    anchor_judgments: list[CandidateJudgment] = field(default_factory=list)

    def __post_init__(self) -> None:
        for kind, responses, judgments in (("candidates", self.candidates, self.judgments),
                                           ("anchors", self.anchors, self.anchor_judgments)):
            if len(responses) != len(judgments):
                raise ValueError(f"prompt {self.prompt[:60]!r}: {len(responses)} {kind} but {len(judgments)} judgments")


def read_judged_prompts(candidates_file: str | os.PathLike, judgments_file: str | os.PathLike) -> Iterator[JudgedPrompt]:
    """The two files read row by row in lockstep (memory does not grow with the number of prompts).

    Raises:
        ValueError: the files have different numbers of rows (both named, with their counts).
    """
    candidates, judgments = read_candidates(candidates_file), iter_jsonl(judgments_file)
    end = object()
    for count, (row, judged) in enumerate(zip_longest(candidates, judgments, fillvalue=end)):
        if row is end or judged is end:  # count what is left of the longer file for the message
            rows = count + (row is not end) + sum(1 for _ in candidates)
            judged_rows = count + (judged is not end) + sum(1 for _ in judgments)
            raise ValueError(f"{candidates_file} has {rows} rows but {judgments_file} has {judged_rows}; "
                             f"expected one row per prompt in both")
        yield JudgedPrompt(row.prompt, row.prompt_ids, row.candidates,
                           [CandidateJudgment.from_json(j) for j in judged["candidates"]], row.anchors,
                           [CandidateJudgment.from_json(j) for j in judged.get("anchors", [])])
