"""The pairs step: a stream of judged prompts in, a preference dataset folder (`dpo.data` format) out."""

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generation import Completion
from judging.aggregate import CandidateJudgment
from judging.judgments import JudgedPrompt
from judging.meta import JudgePair
from judging.pairs import PairChoice, PairSkip, PairStats, PairStrategy, select_anchored, select_pair
from judging.writer import OverflowPolicy, PreferenceWriter

__all__ = ["PairBuildSummary", "build_preference_pairs"]


@dataclass
class PairBuildSummary:
    """What `build_preference_pairs` wrote.

    Attributes:
        folder: the published dataset folder (it exists even when no pair was kept).
        stats: per-prompt outcomes: pairs written and skips by reason (selection and writer skips).
        truncated: written pairs whose responses were cut to fit `max_len`.
        judge_pairs: judge pairs written after the actor's pairs (meta-judging).
    """

    folder: Path
    stats: PairStats
    truncated: int
    judge_pairs: int = 0

    @property
    def num_pairs(self) -> int:
        return self.stats.pairs

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary: `PairStats.summary()` plus `truncated` and `folder`."""
        return {**self.stats.summary(), "truncated": self.truncated, "judge_pairs": self.judge_pairs,
                "folder": str(self.folder)}

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for logging."""
        return {**self.stats.as_dict(), "pairs/truncated": float(self.truncated),
                "pairs/judge_pairs": float(self.judge_pairs)}


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
    judge_pairs: Sequence[JudgePair] = (),
    judge_share: float = 0.15,
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
        judge_pairs: preference pairs for the judge (meta-judging), written after the actor's pairs
            and capped so that they are at most `judge_share` of all pairs.
        judge_share: the cap's share, in (0, 1).

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
            choice = _choose(row, strategy, rho, rng, require_finished)
            if isinstance(choice, PairChoice):
                rejected = (row.anchors if choice.anchored else row.candidates)[choice.rejected]
                reason = writer.add(row.prompt_ids, row.candidates[choice.chosen].token_ids, rejected.token_ids,
                                    choice.chosen_score, choice.rejected_score, _record(row, choice, rejected))
                choice = PairSkip(reason) if reason is not None else choice
            stats.record(choice)
        kept = int(judge_share / (1 - judge_share) * stats.pairs)
        written = sum(writer.add(p.prompt_ids, p.chosen_ids, p.rejected_ids, 1.0, 0.0, {"judge_pair": p.record}) is None
                      for p in judge_pairs[:kept])
    return PairBuildSummary(folder=writer.folder, stats=stats, truncated=writer.truncated, judge_pairs=written)


def _scores(responses: Sequence[Completion], verdicts: Sequence[CandidateJudgment], require_finished: bool) -> list:
    return [v.score if (c.finished or not require_finished) else None for c, v in zip(responses, verdicts)]


def _choose(row: JudgedPrompt, strategy: PairStrategy, rho: float, rng: random.Random,
            require_finished: bool) -> PairChoice | PairSkip:
    """Anchored rejection when the row has anchor responses (and the strategy uses the judge's order),
    else the strategy on the candidates alone."""
    scores = _scores(row.candidates, row.judgments, require_finished)
    lengths = [len(c.token_ids) for c in row.candidates]
    if row.anchors and strategy != "random":
        anchored = select_anchored(scores, lengths, _scores(row.anchors, row.anchor_judgments, require_finished),
                                   [len(a.token_ids) for a in row.anchors])
        if anchored is not None:
            return anchored
    return select_pair(scores, lengths, strategy, rho, rng)


def _record(row: JudgedPrompt, choice: PairChoice, rejected: Completion) -> dict:
    rejected_judgment = (row.anchor_judgments if choice.anchored else row.judgments)[choice.rejected]
    return {
        "prompt": row.prompt,
        "chosen": row.candidates[choice.chosen].text,
        "rejected": rejected.text,
        "chosen_index": choice.chosen,
        "rejected_index": choice.rejected,
        "rejected_from": "anchor" if choice.anchored else "candidates",
        "scores": [v.score for v in row.judgments],
        "judgments": {"chosen": row.judgments[choice.chosen].judgments, "rejected": rejected_judgment.judgments},
    }
