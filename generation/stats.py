"""Throughput figures of generation calls, accumulated over calls and logged by the pipeline."""

from dataclasses import asdict, dataclass


@dataclass
class GenerationStats:
    """Counters accumulated over one or more `generate` calls.

    Attributes:
        prompts: Distinct prompts submitted.
        sequences: Sequences decoded (prompts x samples).
        new_tokens: Tokens generated (EOS included, prompt and padding excluded).
        seconds: Wall-clock time spent inside `generate`.
        calls: Number of `generate` calls recorded.
    """

    prompts: int = 0
    sequences: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    calls: int = 0

    @property
    def tokens_per_second(self) -> float:
        """New tokens per wall-clock second (0.0 before anything was timed)."""
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def record(self, *, prompts: int, sequences: int, new_tokens: int, seconds: float) -> None:
        """Add the figures of one call."""
        self.prompts += prompts
        self.sequences += sequences
        self.new_tokens += new_tokens
        self.seconds += seconds
        self.calls += 1

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics dict (e.g. for MLflow), keys optionally prefixed."""
        figures = {**asdict(self), "tokens_per_second": self.tokens_per_second}
        return {f"{prefix}{key}": float(value) for key, value in figures.items()}
