"""Data-parallel generation: the buckets of each `generate` call shared out across processes.

`generate` decodes its prompts bucket by bucket (`plan_buckets`) from one random stream, so a
bucket's samples depend on every bucket decoded before it. `DataParallelModel` wraps a model so that
each bucket samples from its own stream (`bucket_seed`; bucket 0 keeps the call's seed), each process
decodes its share of the buckets (`shard_buckets`: round-robin by rank) and the completions of all
processes are gathered back in prompt order. The result depends on the prompts and the sampling
settings only, not on how many processes share the work: 1 and N processes give the same
completions, token for token. (It differs from a plain `generate` call with more than one bucket,
whose buckets share one stream.)

A `DataParallelModel` is a `GenerationEngine`, so it goes wherever a model goes in generation
(`generate`, `sample_candidates`, `self_instruct`, the judges, evaluation). Every process must make
the same calls in the same order; it does when every process runs the same code on the same inputs,
since each call returns the same gathered result on every process.
"""

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from generation.decoding import (
    Completion,
    _validate_prompts,
    check_num_samples,
    generate,
    plan_buckets,
    resolve_prefix_len,
)
from generation.next_token import SamplingParams
from generation.stats import GenerationStats

__all__ = ["DataParallelModel", "Shard", "bucket_seed", "shard_buckets"]

# What this process hands in -> what every process handed in, by rank (the same list on every process).
Gather = Callable[[Any], list[Any]]


def bucket_seed(seed: int, bucket: int) -> int:
    """Seed of bucket `bucket` of a call seeded `seed`. Bucket 0 keeps the call's seed, so a call
    that fits in one bucket samples exactly what a plain `generate` call samples."""
    if bucket == 0:
        return seed
    digest = hashlib.sha256(json.dumps(["generate-bucket", seed, bucket]).encode()).hexdigest()[:20]
    return int(digest, 16) % 2**63


def shard_buckets(num_buckets: int, rank: int, world: int) -> list[int]:
    """The buckets process `rank` of `world` decodes: every `world`-th one from its rank on. Buckets
    come longest first, so round-robin hands every process a similar share of long and short ones."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    return list(range(rank, num_buckets, world))


def _alone(obj: Any) -> list[Any]:
    return [obj]


def _all_gather(obj: Any) -> list[Any]:
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@dataclass(frozen=True)
class Shard:
    """This process's place among the processes that share generation, and how they exchange results.

    Attributes:
        rank: This process, in [0, world).
        world: Processes sharing each call.
        gather: Collective exchange of one object per process (`torch.distributed.all_gather_object`
            in `from_process_group`); called once per `generate` call that has prompts.
    """

    rank: int = 0
    world: int = 1
    gather: Gather = field(default=_alone, compare=False)

    @classmethod
    def from_process_group(cls) -> "Shard":
        """The default `torch.distributed` process group (`accelerate launch` ranks); alone without one."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), _all_gather)


class DataParallelModel:
    """A model whose `generate` calls are split by bucket over the processes of `shard`.

    Each process holds its own copy of the model (on its own device under `accelerate launch`).
    """

    def __init__(self, model: Any, shard: Shard | None = None) -> None:
        self.model, self.shard = model, shard or Shard()
        # Prompts handed in, and those this process decoded itself: what each rank reports it did.
        self.prompts_seen = self.prompts_decoded = 0

    @property
    def config(self) -> Any:
        """The model's Hugging Face config (what prompt budgets and context checks read)."""
        return self.model.config

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
        """Same arguments and result as `generate`, each bucket seeded by `bucket_seed`.

        Raises:
            PromptError: as `generate` does, on every process alike and before any exchange.
        """
        started = time.perf_counter()
        check_num_samples(num_samples)
        outputs: list[list[Completion]] = [[] for _ in prompts]
        if prompts:
            _validate_prompts(self.model, prompts)
            # Resolved over all prompts, so every bucket reuses the same prefix length on any process.
            prefix_len = resolve_prefix_len(prompts, shared_prefix_len) or None
            buckets = plan_buckets(prompts, params.batch_size, num_samples)
            own = {
                b: generate(self.model, tokenizer, [prompts[i] for i in buckets[b]],
                            dataclasses.replace(params, seed=bucket_seed(params.seed, b)), num_samples,
                            shared_prefix_len=prefix_len)
                for b in shard_buckets(len(buckets), self.shard.rank, self.shard.world)
            }
            self.prompts_seen += len(prompts)
            self.prompts_decoded += sum(len(buckets[b]) for b in own)
            for part in self.shard.gather(own):
                for b, completions in part.items():
                    for i, row in zip(buckets[b], completions, strict=True):
                        outputs[i] = row
        if stats is not None:
            stats.record(prompts=len(prompts), sequences=len(prompts) * num_samples,
                         new_tokens=sum(len(c.token_ids) for row in outputs for c in row),
                         seconds=time.perf_counter() - started)
        return outputs
