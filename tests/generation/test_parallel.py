"""DataParallelModel: buckets shared out over N processes sample exactly what one process samples.

The processes are threads here, exchanging results through a barrier (the same `Shard.gather`
contract `torch.distributed.all_gather_object` fills under `accelerate launch`); the real 2-process
launch is tested end to end in tests/flows/test_launch.py.
"""

import copy
import threading

import pytest

from generation import (
    DataParallelModel,
    GenerationStats,
    PromptError,
    SamplingParams,
    Shard,
    bucket_seed,
    common_prefix_len,
    encode_chat_prompt,
    generate,
    plan_buckets,
    shard_buckets,
)

TEXTS = [
    "the cat sat",
    "why did the big red dog run under the green table so quickly",
    "list",
    "explain how a small bird flew over the tree",
    "what cat",
    "a blue bird",
    "how did the small dog find the mat",
]


@pytest.fixture(scope="module")
def prompts(tiny) -> list[list[int]]:
    return [encode_chat_prompt(tiny.tokenizer, text) for text in TEXTS]


def sampled(batch_size: int, seed: int = 7) -> SamplingParams:
    return SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, batch_size=batch_size, seed=seed)


def barrier_shards(world: int) -> list[Shard]:
    """One `Shard` per simulated process; `gather` blocks until every process has handed in."""
    barrier, slots = threading.Barrier(world, timeout=60), [None] * world

    def shard(rank: int) -> Shard:
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            everyone = list(slots)
            barrier.wait()  # nobody overwrites a slot before every process has read them all
            return everyone

        return Shard(rank, world, gather)

    return [shard(rank) for rank in range(world)]


def on_processes(world: int, model, call) -> list:
    """`call(DataParallelModel)` on `world` simulated processes (threads, each with its own model copy);
    returns every process's result."""
    results, errors = [None] * world, []

    def run(shard: Shard) -> None:
        try:
            results[shard.rank] = call(DataParallelModel(copy.deepcopy(model), shard))
        except Exception as err:  # noqa: BLE001 - re-raised in the test's thread below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(shard,)) for shard in barrier_shards(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def token_ids(outputs) -> list[list[list[int]]]:
    return [[c.token_ids for c in row] for row in outputs]


def test_round_robin_shards_cover_every_bucket_once():
    for world in (1, 2, 3, 4):
        shards = [shard_buckets(7, rank, world) for rank in range(world)]
        assert sorted(b for shard in shards for b in shard) == list(range(7))
    assert shard_buckets(5, 1, 2) == [1, 3]
    with pytest.raises(ValueError, match="rank 2"):
        shard_buckets(5, 2, 2)


def test_bucket_zero_keeps_the_seed_and_the_others_get_their_own():
    assert bucket_seed(11, 0) == 11
    seeds = {bucket_seed(11, b) for b in range(1, 50)} | {bucket_seed(12, b) for b in range(1, 50)}
    assert len(seeds) == 98 and 11 not in seeds


def test_buckets_hold_whole_prompts_longest_first(prompts):
    buckets = plan_buckets(prompts, batch_size=5, num_samples=2)  # 2 prompts (4 sequences) per bucket
    assert [len(b) for b in buckets] == [2, 2, 2, 1]
    lengths = [len(prompts[i]) for b in buckets for i in b]
    assert lengths == sorted(lengths, reverse=True) and sorted(i for b in buckets for i in b) == list(range(7))


@pytest.mark.parametrize("world", [2, 3])
def test_several_processes_sample_what_one_samples(tiny, prompts, world):
    params = sampled(batch_size=4)  # 2 prompts x 2 samples per bucket: 4 buckets

    def call(model):
        stats = GenerationStats()
        return generate(model, tiny.tokenizer, prompts, params, num_samples=2, stats=stats), stats

    (alone, alone_stats), = on_processes(1, tiny.model, call)
    shared = on_processes(world, tiny.model, call)
    for outputs, stats in shared:  # every process ends with the whole, merged result
        assert token_ids(outputs) == token_ids(alone)
        assert [[c.text for c in row] for row in outputs] == [[c.text for c in row] for row in alone]
        assert (stats.prompts, stats.sequences, stats.new_tokens) == (7, 14, alone_stats.new_tokens)
    assert alone_stats.new_tokens == sum(len(c.token_ids) for row in alone for c in row)
    assert any(len({tuple(sample) for sample in row}) > 1 for row in token_ids(alone))  # really sampled


def test_a_call_that_fits_one_bucket_samples_what_plain_generate_samples(tiny, prompts):
    params = sampled(batch_size=64)
    plain = generate(tiny.model, tiny.tokenizer, prompts, params, num_samples=3)
    assert token_ids(generate(DataParallelModel(tiny.model), tiny.tokenizer, prompts, params, num_samples=3)) == \
        token_ids(plain)


def test_shared_prefix_gives_the_same_judgments_on_any_number_of_processes(tiny):
    prefix = "explain why the big red dog ran under the green table and"
    ids = [encode_chat_prompt(tiny.tokenizer, f"{prefix} {t}") for t in TEXTS]
    shared, params = common_prefix_len(ids), sampled(batch_size=3)
    assert shared >= 10

    def call(model):
        return generate(model, tiny.tokenizer, ids, params, num_samples=3, shared_prefix_len=shared)

    one, = on_processes(1, tiny.model, call)
    assert all(token_ids(out) == token_ids(one) for out in on_processes(2, tiny.model, call))
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, batch_size=2)
    assert token_ids(generate(DataParallelModel(tiny.model), tiny.tokenizer, ids, greedy, shared_prefix_len=shared)) \
        == token_ids(generate(tiny.model, tiny.tokenizer, ids, greedy))  # the prefix cache changes nothing


def test_bad_prompts_fail_on_every_process_before_any_exchange(tiny, prompts):
    def never(obj):
        raise AssertionError("a bad prompt must fail before the processes exchange anything")

    model = DataParallelModel(tiny.model, Shard(0, 2, never))
    vocab = tiny.model.get_input_embeddings().num_embeddings
    with pytest.raises(PromptError, match="outside"):
        generate(model, tiny.tokenizer, [prompts[0], [vocab]], sampled(4))
    with pytest.raises(PromptError, match="num_samples"):
        generate(model, tiny.tokenizer, prompts, sampled(4), num_samples=0)
    stats = GenerationStats()
    assert generate(model, tiny.tokenizer, [], sampled(4), stats=stats) == [] and stats.calls == 1


def test_without_a_process_group_the_shard_is_alone():
    shard = Shard.from_process_group()
    assert (shard.rank, shard.world, shard.gather("x")) == (0, 1, ["x"])
