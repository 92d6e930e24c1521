"""The pairs step: a stream of judged prompts in, a preference dataset folder (`dpo.data` format) out."""

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generation import Completion
from judging.aggregate import CandidateJudgment
from judging.judgments import JudgedPrompt
from judging.pairs import PairChoice, PairSkip, PairStats, PairStrategy, select_pair
from judging.writer import OverflowPolicy, PreferenceWriter

__all__ = ["PairBuildSummary", "build_preference_pairs"]


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
    judged: Iterable[JudgedPrompt],
    *,
    max_len: int,
    strategy: PairStrategy = "max_min",
    rho: float = 0.0,
    require_finished: bool = False,
    on_overflow: OverflowPolicy = "truncate",
    overwrite: bool = False,
    seed: int = 0,
) -> PairBuildSummary:
    """Select one pair per judged prompt and stream the pairs into a new preference dataset folder.

    `judged` may be any iterable (a list, or `read_judged_prompts` reading two files): it is
    consumed one prompt at a time, so memory does not grow with the number of prompts.

    Args:
        folder: output folder, published atomically by `PreferenceWriter`.
        judged: per prompt: its text, chat-rendered ids (ending with the assistant header), the
            sampled completions (`token_ids` new tokens only) and one judgment per completion.
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
        ValueError: raised by the stream (e.g. files of different lengths) after the earlier
            prompts were read, before anything is published: `folder` is left as it was.
    """
    stats = PairStats()
    rng = random.Random(seed)
    with PreferenceWriter(folder, max_len, overwrite=overwrite, on_overflow=on_overflow) as writer:
        for row in judged:
            cands, verdicts = row.candidates, row.judgments
            scores = [v.score if (c.finished or not require_finished) else None for c, v in zip(cands, verdicts)]
            choice = select_pair(scores, [len(c.token_ids) for c in cands], strategy, rho, rng)
            if isinstance(choice, PairChoice):
                reason = writer.add(row.prompt_ids, cands[choice.chosen].token_ids, cands[choice.rejected].token_ids,
                                    choice.chosen_score, choice.rejected_score,
                                    _record(row.prompt, cands, verdicts, choice))
                choice = PairSkip(reason) if reason is not None else choice
            stats.record(choice)
    return PairBuildSummary(folder=writer.folder, stats=stats, truncated=writer.truncated)


def _record(prompt: str, cands: Sequence[Completion], verdicts: Sequence[CandidateJudgment],
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
