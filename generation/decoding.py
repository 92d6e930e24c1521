"""Batched, KV-cached autoregressive decoding over a Hugging Face causal LM's forward pass.

Prompts are sorted by length into buckets of `batch_size` sequences (prompts x samples), left-padded
with an attention mask, prefilled once per prompt (the cache is then repeated for each sample) and
decoded one token per step from the cache. Finished rows
(EOS or length budget) are dropped from the batch so the tail of a bucket costs only what is left.
A prompt prefix shared by every sequence (e.g. a judge template) can be prefilled once and its cache
copied into each bucket (`shared_prefix_len`).
"""

import contextlib
import copy
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import DynamicCache

from generation.next_token import SamplingParams, sample_next_tokens
from generation.stats import GenerationStats


class PromptError(ValueError):
    """A prompt given to `generate` is empty, too long for the model, or has out-of-range token ids."""


@dataclass
class Completion:
    """One generated continuation of a prompt.

    Attributes:
        token_ids: New tokens only; ends with the EOS token when generation stopped at EOS.
        text: The new tokens decoded with special tokens skipped, stripped.
        finished: True when the sequence ended with EOS (False when it hit a length limit).
    """

    token_ids: list[int]
    text: str
    finished: bool

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": self.token_ids, "finished": self.finished}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "Completion":
        return cls(token_ids=list(row["token_ids"]), text=row["text"], finished=bool(row["finished"]))


@runtime_checkable
class GenerationEngine(Protocol):
    """A generation backend that `generate` hands its calls to instead of decoding itself (e.g.
    `VllmEngine`, which runs vLLM in another process). Besides this method it has `config`, the
    model's Hugging Face config, which prompt budgets and context checks read."""

    def generate_completions(
        self,
        tokenizer: Any,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        num_samples: int = 1,
        stats: GenerationStats | None = None,
        *,
        shared_prefix_len: int | None = None,
    ) -> list[list[Completion]]:
        """Same arguments and result as `generate`."""
        ...


@dataclass(frozen=True)
class _ModelCall:
    """How to call one model's forward with a cache, whatever this transformers version names it."""

    model: Any
    cache_kwarg: str
    supports_logits_to_keep: bool

    @classmethod
    def for_model(cls, model: Any) -> "_ModelCall":
        params = inspect.signature(model.forward).parameters
        # transformers 5.x calls it `cache` (old name `past_key_values` is deprecated).
        cache_kwarg = "cache" if "cache" in params else "past_key_values"
        return cls(model, cache_kwarg, "logits_to_keep" in params)

    def new_cache(self) -> DynamicCache:
        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers: no config argument
            return DynamicCache()

    def last_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        """Run the forward pass (filling `cache` in place); logits at the last position, (B, V)."""
        kwargs: dict[str, Any] = {self.cache_kwarg: cache, "use_cache": True}
        if self.supports_logits_to_keep:
            kwargs["logits_to_keep"] = 1  # prefill would otherwise materialise (B, T, V) logits
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        return out.logits[:, -1, :]


@dataclass
class _LiveRows:
    """Decoding state of the rows of a bucket that are still generating."""

    seq_index: list[int]  # index into the flat sequence list, one per live row
    attention_mask: torch.Tensor  # (B, T) 1 = real token (prefix, prompt or generated), 0 = left pad
    next_position: torch.Tensor  # (B, 1) position id of the token fed at the next step
    cache: DynamicCache


def _left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (B, T) ids and a (B, T) mask, so every row's last token is at T-1."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long, device=device)
            attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def _prefill_prefix(call: _ModelCall, prefix: Sequence[int], device: torch.device) -> DynamicCache:
    """KV cache of a prefix shared by every sequence, computed once with batch size 1."""
    cache = call.new_cache()
    input_ids = torch.as_tensor([list(prefix)], dtype=torch.long, device=device)  # (1, P)
    positions = torch.arange(len(prefix), device=device).unsqueeze(0)  # (1, P)
    call.last_logits(input_ids, torch.ones_like(input_ids), positions, cache)
    return cache


def _prefill(
    call: _ModelCall,
    suffixes: Sequence[Sequence[int]],
    seq_index: list[int],
    pad_id: int,
    prefix: tuple[DynamicCache, int] | None,
    device: torch.device,
    num_samples: int = 1,
) -> tuple[_LiveRows, torch.Tensor]:
    """Feed a bucket's prompts (after the shared prefix, if any) in one forward pass.

    Each prompt is fed once; its cache row, mask and logits are then repeated `num_samples` times,
    one row per sample (`seq_index` lists the rows in that order).

    Returns:
        The live-row state and the next-token logits at each row's last prompt token, (B, V).
    """
    input_ids, suffix_mask = _left_pad(suffixes, pad_id, device)  # (B, S)
    batch = len(suffixes)
    if prefix is None:
        cache, attention_mask = call.new_cache(), suffix_mask
    else:
        prefix_cache, prefix_len = prefix
        cache = copy.deepcopy(prefix_cache)  # each bucket extends its own copy
        cache.batch_repeat_interleave(batch)
        # Layout [prefix | pads | suffix]: pads sit mid-row, masked out like ordinary left padding.
        prefix_mask = torch.ones((batch, prefix_len), dtype=torch.long, device=device)
        attention_mask = torch.cat([prefix_mask, suffix_mask], dim=1)  # (B, P + S)
    # Position = number of real tokens before it, so padding never shifts positions.
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, P + S)
    logits = call.last_logits(input_ids, attention_mask, positions[:, -input_ids.shape[1] :], cache)
    next_position = positions[:, -1:] + 1  # (B, 1)
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
        attention_mask, next_position, logits = (
            t.repeat_interleave(num_samples, dim=0) for t in (attention_mask, next_position, logits)
        )
    return _LiveRows(seq_index, attention_mask, next_position, cache), logits


def _decode_step(call: _ModelCall, rows: _LiveRows, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one new token per live row through the cache; next-token logits, (B, V)."""
    ones = torch.ones_like(rows.attention_mask[:, :1])
    rows.attention_mask = torch.cat([rows.attention_mask, ones], dim=1)  # (B, T + 1)
    logits = call.last_logits(tokens.unsqueeze(1), rows.attention_mask, rows.next_position, rows.cache)
    rows.next_position = rows.next_position + 1
    return logits


def _keep_rows(rows: _LiveRows, keep: list[int]) -> _LiveRows:
    """Drop finished rows from the batch (including their slice of the KV cache)."""
    index = torch.as_tensor(keep, dtype=torch.long, device=rows.attention_mask.device)
    rows.cache.batch_select_indices(index)
    return _LiveRows(
        [rows.seq_index[i] for i in keep], rows.attention_mask[index], rows.next_position[index], rows.cache
    )


@dataclass
class _Outputs:
    """New tokens of every flat sequence, filled in as decoding proceeds."""

    tokens: list[list[int]]
    finished: list[bool]
    budgets: list[int]  # max new tokens per sequence (params and model context, whichever is smaller)
    stop_ids: frozenset[int]

    def append(self, seq_index: list[int], new_tokens: list[int]) -> list[bool]:
        """Record one token per live row; returns which rows are now done."""
        done = []
        for seq, token in zip(seq_index, new_tokens, strict=True):
            self.tokens[seq].append(token)
            self.finished[seq] = token in self.stop_ids
            done.append(self.finished[seq] or len(self.tokens[seq]) >= self.budgets[seq])
        return done


def _decode_bucket(
    call: _ModelCall,
    bucket: list[int],
    prompts: Sequence[Sequence[int]],
    num_samples: int,
    prefix: tuple[DynamicCache, int] | None,
    outputs: _Outputs,
    params: SamplingParams,
    generator: torch.Generator,
    pad_id: int,
) -> None:
    """Generate the `num_samples` sequences of every prompt of one bucket until each has hit EOS or its budget."""
    device = generator.device
    skip = prefix[1] if prefix is not None else 0
    seq_index = [p * num_samples + j for p in bucket for j in range(num_samples)]
    suffixes = [list(prompts[p][skip:]) for p in bucket]
    rows, logits = _prefill(call, suffixes, seq_index, pad_id, prefix, device, num_samples)
    while True:
        tokens = sample_next_tokens(logits, params, generator)  # (B,)
        done = outputs.append(rows.seq_index, tokens.tolist())
        if all(done):
            return
        if any(done):
            keep = [i for i, is_done in enumerate(done) if not is_done]
            rows, tokens = _keep_rows(rows, keep), tokens[torch.as_tensor(keep, device=tokens.device)]
        logits = _decode_step(call, rows, tokens)


def plan_buckets(prompts: Sequence[Sequence[int]], batch_size: int, num_samples: int = 1) -> list[list[int]]:
    """The buckets `generate` decodes, in its order: prompt indices grouped by similar length, longest
    first (less padding, an early OOM), whole prompts of `max(1, batch_size // num_samples)` per bucket,
    so a prompt's samples share one prefill."""
    per_bucket = max(1, batch_size // num_samples)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    return [order[start : start + per_bucket] for start in range(0, len(order), per_bucket)]


def common_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all prompts."""
    if not prompts:
        return 0
    shortest = min(len(p) for p in prompts)
    first = prompts[0]
    for pos in range(shortest):
        if any(p[pos] != first[pos] for p in prompts):
            return pos
    return shortest


def prompt_budget(model: Any, max_new_tokens: int) -> int | None:
    """Longest prompt that leaves `max_new_tokens` of the model's context for new tokens.

    Returns:
        `max_position_embeddings - max_new_tokens`; context - 1 when the context is not larger than
        `max_new_tokens` (generate then caps the new tokens); None when the model states no context.
    """
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if context is None:
        return None
    return context - max_new_tokens if context > max_new_tokens else context - 1


def _validate_prompts(model: Any, prompts: Sequence[Sequence[int]]) -> int | None:
    """Check prompts are non-empty, in-vocabulary and fit the context; returns the context size."""
    context = getattr(model.config, "max_position_embeddings", None)
    check_prompts(prompts, model.get_input_embeddings().num_embeddings, context)
    return context


def check_num_samples(num_samples: int) -> None:
    """Raise `PromptError` unless at least one completion per prompt is asked for (every engine)."""
    if num_samples < 1:
        raise PromptError(f"num_samples={num_samples} is invalid; expected an integer >= 1")


def check_prompts(prompts: Sequence[Sequence[int]], vocab: int, context: int | None) -> None:
    """Raise `PromptError` for an empty prompt, an id outside [0, vocab) or a prompt that leaves no
    room for a new token in `context` (None: no limit)."""
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise PromptError(f"prompt {i} is empty; generate needs at least one prompt token")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise PromptError(f"prompt {i} has token ids outside [0, {vocab}) (the model's vocabulary)")
        if context is not None and len(prompt) >= context:
            raise PromptError(
                f"prompt {i} has {len(prompt)} tokens; the model's context (max_position_embeddings) is "
                f"{context}, so at most {context - 1} prompt tokens leave room for a new token"
            )


def stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """EOS ids of the tokenizer and of the model's generation config (chat models may list several)."""
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for eos in (tokenizer.eos_token_id, config_eos):
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    if not ids:
        raise PromptError("the tokenizer has no eos_token_id; generation could never stop at EOS")
    return frozenset(ids)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Put the model in eval mode (no dropout) and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def resolve_prefix_len(prompts: Sequence[Sequence[int]], shared_prefix_len: int | None) -> int:
    """Usable shared-prefix length: checked against the prompts, leaving >= 1 own token per prompt."""
    if not shared_prefix_len:
        return 0
    actual = common_prefix_len(prompts)
    if shared_prefix_len > actual:
        raise PromptError(
            f"shared_prefix_len={shared_prefix_len} but the prompts share only their first {actual} tokens"
        )
    # The last prompt token must go through the bucket prefill to give next-token logits.
    return min(shared_prefix_len, min(len(p) for p in prompts) - 1)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    num_samples: int = 1,
    stats: GenerationStats | None = None,
    *,
    shared_prefix_len: int | None = None,
) -> list[list[Completion]]:
    """Sample `num_samples` completions for each prompt with a batched, KV-cached decoding loop.

    Args:
        model: A Hugging Face causal LM (e.g. `LlamaForCausalLM`), or a `GenerationEngine` (e.g.
            `VllmEngine`), which then does the work with the same arguments and result.
        tokenizer: Its tokenizer, with `eos_token_id` (and preferably `pad_token_id`) set.
        prompts: Prompt token ids, e.g. from `encode_chat_prompt`.
        params: Sampling settings; `max_new_tokens` counts new tokens only.
        num_samples: Completions per prompt.
        stats: When given, this call's figures are added to it.
        shared_prefix_len: When set, the first that many tokens must be identical in every prompt
            (see `common_prefix_len`); their KV cache is computed once and reused by every bucket.

    Returns:
        One list of `num_samples` completions per prompt, in input order, without the prompt.
    """
    if isinstance(model, GenerationEngine):
        return model.generate_completions(tokenizer, prompts, params, num_samples, stats,
                                          shared_prefix_len=shared_prefix_len)
    check_num_samples(num_samples)
    started = time.perf_counter()
    if not prompts:
        if stats is not None:
            stats.record(prompts=0, sequences=0, new_tokens=0, seconds=time.perf_counter() - started)
        return []
    context = _validate_prompts(model, prompts)
    prefix_len = resolve_prefix_len(prompts, shared_prefix_len)
    device = model.get_input_embeddings().weight.device
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    budgets = [  # one per sequence: prompt-major, sample-minor
        params.max_new_tokens if context is None else min(params.max_new_tokens, context - len(p))
        for p in prompts
        for _ in range(num_samples)
    ]
    outputs = _Outputs([[] for _ in budgets], [False] * len(budgets), budgets, stop_token_ids(model, tokenizer))
    call = _ModelCall.for_model(model)
    generator = torch.Generator(device=device).manual_seed(params.seed)
    with torch.inference_mode(), _eval_mode(model):
        prefix = (
            (_prefill_prefix(call, prompts[0][:prefix_len], device), prefix_len) if prefix_len else None
        )
        for bucket in plan_buckets(prompts, params.batch_size, num_samples):
            _decode_bucket(call, bucket, prompts, num_samples, prefix, outputs, params, generator, pad_id)
    completions = [
        Completion(tokens, tokenizer.decode(tokens, skip_special_tokens=True).strip(), finished)
        for tokens, finished in zip(outputs.tokens, outputs.finished, strict=True)
    ]
    if stats is not None:
        stats.record(
            prompts=len(prompts),
            sequences=len(budgets),
            new_tokens=sum(len(t) for t in outputs.tokens),
            seconds=time.perf_counter() - started,
        )
    return [completions[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]
