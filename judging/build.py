"""From judged candidates to a preference dataset folder in one call (the pipeline's pairs step)."""

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, Protocol

from judging.aggregate import CandidateJudgment
from judging.pairs import PairChoice, PairSkip, PairStats, PairStrategy, select_pair
from judging.writer import OverflowPolicy, PreferenceWriter

__all__ = ["CandidateLike", "PairBuildSummary", "build_preference_pairs"]

_INPUTS = ("prompts", "prompt_ids", "candidates", "judgments")


class CandidateLike(Protocol):
    """What a candidate must offer (`generation.Completion` does)."""

    token_ids: list[int]
    text: str
    finished: bool


@dataclass
class PairBuildSummary:
    """What `build_preference_pairs` wrote.

    Attributes:
        folder: the published dataset folder (it exists even when no pair was kept).
        stats: per-prompt outcomes: pairs written and skips by reason (selection and writer skips).
        truncated: written pairs whose responses were cut to fit `max_len`.
    """

    folder: Path
    stats: PairStats
    truncated: int

    @property
    def num_pairs(self) -> int:
        return self.stats.pairs

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary: `PairStats.summary()` plus `truncated` and `folder`."""
        return {**self.stats.summary(), "truncated": self.truncated, "folder": str(self.folder)}

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for logging."""
        return {**self.stats.as_dict(), "pairs/truncated": float(self.truncated)}


def build_preference_pairs(
    folder: str | Path,
    prompts: Iterable[str],
    prompt_ids: Iterable[Sequence[int]],
    candidates: Iterable[Sequence[CandidateLike]],
    judgments: Iterable[Sequence[CandidateJudgment]],
    *,
    max_len: int,
    strategy: PairStrategy = "max_min",
    rho: float = 0.0,
    require_finished: bool = False,
    on_overflow: OverflowPolicy = "truncate",
    overwrite: bool = False,
    seed: int = 0,
) -> PairBuildSummary:
    """Select one pair per prompt and stream the pairs into a new preference dataset folder.

    The four per-prompt inputs may be any iterables (lists, or generators reading files): they are
    consumed together, one prompt at a time, so memory does not grow with the number of prompts.

    Args:
        folder: output folder, published atomically by `PreferenceWriter`.
        prompts: prompt texts (for `pairs.jsonl`).
        prompt_ids: chat-rendered prompt token ids (ending with the assistant header), one per prompt.
        candidates: per prompt, the sampled completions (`token_ids` new tokens only, `text`, `finished`).
        judgments: per prompt, one `CandidateJudgment` per candidate (judge or external reward).
        max_len: longest prompt + response row stored.
        strategy: pair strategy, a key of `PAIR_STRATEGIES`.
        rho: tier width for `length_control`.
        require_finished: treat candidates that did not end with EOS as unscored (as NeMo-Aligner
            does), so a truncated answer is never chosen or rejected.
        on_overflow: what the writer does with rows longer than `max_len` ("truncate" or "skip").
        overwrite: replace an existing dataset folder.
        seed: seeds the one generator that randomized strategies (`random`) draw from, prompt by
            prompt in order, so the same inputs and seed give the same dataset.

    Returns:
        The folder and per-prompt statistics; `stats.pairs` may be 0 (the folder is then a valid
        empty dataset and the caller decides whether that is an error).

    Raises:
        ValueError: the per-prompt inputs differ in length, or a prompt's candidates and judgments
            differ in number. Raised when the shorter input ends (after the earlier prompts were
            read), before anything is published: `folder` is left as it was.
    """
    stats = PairStats()
    rng = random.Random(seed)
    end = object()
    with PreferenceWriter(folder, max_len, overwrite=overwrite, on_overflow=on_overflow) as writer:
        rows = zip_longest(prompts, prompt_ids, candidates, judgments, fillvalue=end)
        for i, row in enumerate(rows):
            if any(x is end for x in row):  # the error aborts the writer: nothing is published
                ended = [name for name, x in zip(_INPUTS, row) if x is end]
                raise ValueError(f"prompts, prompt_ids, candidates and judgments must have one entry per prompt: "
                                 f"{' and '.join(ended)} ended after {i} prompts, the others have more")
            prompt, ids, cands, verdicts = row
            if len(cands) != len(verdicts):
                raise ValueError(f"prompt {i}: {len(cands)} candidates but {len(verdicts)} judgments")
            scores = [v.score if (c.finished or not require_finished) else None for c, v in zip(cands, verdicts)]
            choice = select_pair(scores, [len(c.token_ids) for c in cands], strategy, rho, rng)
            if isinstance(choice, PairChoice):
                reason = writer.add(ids, cands[choice.chosen].token_ids, cands[choice.rejected].token_ids,
                                    choice.chosen_score, choice.rejected_score,
                                    _record(prompt, cands, verdicts, choice))
                choice = PairSkip(reason) if reason is not None else choice
            stats.record(choice)
    return PairBuildSummary(folder=writer.folder, stats=stats, truncated=writer.truncated)


def _record(prompt: str, cands: Sequence[CandidateLike], verdicts: Sequence[CandidateJudgment],
            choice: PairChoice) -> dict:
    return {
        "prompt": prompt,
        "chosen": cands[choice.chosen].text,
        "rejected": cands[choice.rejected].text,
        "chosen_index": choice.chosen,
        "rejected_index": choice.rejected,
        "scores": [v.score for v in verdicts],
        "judgments": {"chosen": verdicts[choice.chosen].judgments,
                      "rejected": verdicts[choice.rejected].judgments},
    }
