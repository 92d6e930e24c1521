"""generate(): KV-cached batched decoding checked against brute-force, cache-free argmax loops."""

import copy

import pytest
import torch

from generation import (
    Completion,
    GenerationStats,
    PromptError,
    SamplingParams,
    common_prefix_len,
    encode_chat_prompt,
    generate,
)

USER_TEXTS = [
    "the cat sat",
    "why did the big red dog run under the green table so quickly",
    "list",
    "explain how a small bird flew over the tree",
    "what cat",
]


def greedy(max_new_tokens: int = 12, batch_size: int = 8) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)


def brute_force_greedy(model, prompt: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Argmax loop re-running the full sequence each step: no cache, no padding, no batching."""
    sequence, new = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax())
            new.append(token)
            sequence.append(token)
            if token == eos_id:
                break
    return new


def with_swapped_output_rows(model, token: int, eos_id: int):
    """Copy of the model whose output rows for `token` and EOS are exchanged: it now emits EOS
    exactly where the original emitted `token`, giving EOS mid-generation without any mock."""
    assert not model.config.tie_word_embeddings  # else swapping would also move input embeddings
    swapped = copy.deepcopy(model)
    with torch.no_grad():
        weight = swapped.lm_head.weight
        weight[[token, eos_id]] = weight[[eos_id, token]].clone()
    return swapped


@pytest.fixture(scope="module")
def prompts(tiny) -> list[list[int]]:
    ids = [encode_chat_prompt(tiny.tokenizer, text) for text in USER_TEXTS]
    assert len({len(p) for p in ids}) >= 4  # different lengths exercise left padding
    return ids


@pytest.fixture(scope="module")
def eos_model(tiny, prompts):
    """A model whose greedy continuations hit EOS after a few tokens for some prompts only."""
    eos = tiny.tokenizer.eos_token_id
    reference = [brute_force_greedy(tiny.model, p, 12, eos) for p in prompts]
    token = reference[0][3]  # the 4th greedy token of prompt 0 becomes EOS
    model = with_swapped_output_rows(tiny.model, token, eos)
    expected = [brute_force_greedy(model, p, 12, eos) for p in prompts]
    assert expected[0][-1] == eos and len(expected[0]) == 4
    assert any(e[-1] != eos for e in expected)  # some rows keep going after others stopped
    return model, expected


def test_greedy_matches_brute_force_loop(tiny, prompts):
    eos = tiny.tokenizer.eos_token_id
    out = generate(tiny.model, tiny.tokenizer, prompts, greedy(12))
    for prompt, (completion,) in zip(prompts, out, strict=True):
        assert completion.token_ids == brute_force_greedy(tiny.model, prompt, 12, eos)


def test_eager_attention_matches_brute_force_with_left_padding(tiny, prompts):
    """The padding mask must also be honoured by the eager (non-SDPA) attention kernel."""
    model = copy.deepcopy(tiny.model)
    model.set_attn_implementation("eager")
    out = generate(model, tiny.tokenizer, prompts, greedy(8, batch_size=len(prompts)))
    for prompt, (completion,) in zip(prompts, out, strict=True):
        assert completion.token_ids == brute_force_greedy(model, prompt, 8, tiny.tokenizer.eos_token_id)


def test_batched_equals_one_at_a_time_with_left_padding(tiny, prompts):
    batched = generate(tiny.model, tiny.tokenizer, prompts, greedy(12, batch_size=len(prompts)))
    for prompt, (completion,) in zip(prompts, batched, strict=True):
        (alone,) = generate(tiny.model, tiny.tokenizer, [prompt], greedy(12, batch_size=1))[0]
        assert completion.token_ids == alone.token_ids


def test_max_new_tokens_counts_new_tokens_only(tiny, prompts):
    out = generate(tiny.model, tiny.tokenizer, prompts, SamplingParams(max_new_tokens=5, temperature=1.0))
    eos = tiny.tokenizer.eos_token_id
    for (completion,) in out:
        assert 1 <= len(completion.token_ids) <= 5
        if not completion.finished:
            assert len(completion.token_ids) == 5 and eos not in completion.token_ids


def test_eos_stops_each_sequence_and_nothing_follows(tiny, prompts, eos_model):
    model, expected = eos_model
    eos = tiny.tokenizer.eos_token_id
    for batch_size in (1, 2, len(prompts)):
        out = generate(model, tiny.tokenizer, prompts, greedy(12, batch_size=batch_size))
        for want, (completion,) in zip(expected, out, strict=True):
            assert completion.token_ids == want
            assert completion.finished == (want[-1] == eos)
            assert eos not in completion.token_ids[:-1]


def test_sampled_sequences_end_at_first_eos(tiny, prompts, eos_model):
    model, _ = eos_model
    eos = tiny.tokenizer.eos_token_id
    out = generate(
        model, tiny.tokenizer, prompts, SamplingParams(max_new_tokens=12, temperature=1.0), num_samples=4
    )
    flat = [c for samples in out for c in samples]
    for completion in flat:
        assert eos not in completion.token_ids[:-1]
        assert completion.finished == (completion.token_ids[-1] == eos)
        assert completion.finished or len(completion.token_ids) == 12


def test_batch_stops_once_every_sequence_finished(tiny, prompts):
    """With EOS always the argmax, one prefill forward per bucket is all it takes."""
    model = copy.deepcopy(tiny.model)
    eos = tiny.tokenizer.eos_token_id
    # Make EOS win everywhere: same head weights plus a large EOS bias.
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(tiny.model.lm_head.weight)
        head.bias.zero_()
        head.bias[eos] = 1e4
    model.lm_head = head
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    out = generate(model, tiny.tokenizer, prompts, greedy(50, batch_size=2))
    assert all(c.token_ids == [eos] and c.finished and c.text == "" for (c,) in out)
    assert len(calls) == 3  # ceil(5 / 2) buckets, prefill only


def test_same_seed_same_output_different_seed_differs(tiny, prompts):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
    first = generate(tiny.model, tiny.tokenizer, prompts, params, num_samples=2)
    again = generate(tiny.model, tiny.tokenizer, prompts, params, num_samples=2)
    other = generate(
        tiny.model,
        tiny.tokenizer,
        prompts,
        SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=8),
        num_samples=2,
    )
    assert first == again
    assert [c.token_ids for s in first for c in s] != [c.token_ids for s in other for c in s]


def test_num_samples_structure_and_stats(tiny, prompts):
    stats = GenerationStats()
    out = generate(tiny.model, tiny.tokenizer, prompts[:3], greedy(6), num_samples=3, stats=stats)
    assert [len(samples) for samples in out] == [3, 3, 3]
    assert all(isinstance(c, Completion) for s in out for c in s)
    # Greedy samples of one prompt are identical and match that prompt's single greedy completion.
    for prompt, samples in zip(prompts[:3], out, strict=True):
        (single,) = generate(tiny.model, tiny.tokenizer, [prompt], greedy(6))[0]
        assert all(c.token_ids == single.token_ids for c in samples)
    assert (stats.prompts, stats.sequences, stats.calls) == (3, 9, 1)
    assert stats.new_tokens == sum(len(c.token_ids) for s in out for c in s)
    assert stats.seconds > 0 and stats.tokens_per_second == pytest.approx(stats.new_tokens / stats.seconds)


def test_text_is_decoded_new_tokens_without_specials(tiny, prompts, eos_model):
    model, _ = eos_model
    out = generate(model, tiny.tokenizer, prompts, greedy(12))
    for (completion,) in out:
        assert (
            completion.text == tiny.tokenizer.decode(completion.token_ids, skip_special_tokens=True).strip()
        )
        assert "<|eos|>" not in completion.text and "<|pad|>" not in completion.text


def test_shared_prefix_cache_matches_no_reuse(tiny):
    prefix = "explain why the big red dog ran under the green table and"
    texts = ["the cat sat", "a bird flew over the tree quickly", "list", "what"]
    ids = [encode_chat_prompt(tiny.tokenizer, f"{prefix} {t}") for t in texts]
    shared = common_prefix_len(ids)
    assert shared >= 10
    plain = generate(tiny.model, tiny.tokenizer, ids, greedy(10, batch_size=3))
    reused = generate(tiny.model, tiny.tokenizer, ids, greedy(10, batch_size=3), shared_prefix_len=shared)
    assert [c.token_ids for (c,) in reused] == [c.token_ids for (c,) in plain]
    with pytest.raises(PromptError, match="share only"):
        generate(tiny.model, tiny.tokenizer, ids, greedy(2), shared_prefix_len=shared + 1)


def test_shared_prefix_equal_to_a_whole_prompt(tiny, prompts):
    """A prompt that is entirely the shared prefix still gets its last token prefilled per bucket."""
    ids = [prompts[0], prompts[0] + prompts[2][1:]]
    plain = generate(tiny.model, tiny.tokenizer, ids, greedy(6))
    reused = generate(tiny.model, tiny.tokenizer, ids, greedy(6), shared_prefix_len=len(prompts[0]))
    assert [c.token_ids for (c,) in reused] == [c.token_ids for (c,) in plain]


def test_invalid_prompts_fail_clearly(tiny, prompts):
    vocab = tiny.model.get_input_embeddings().num_embeddings
    with pytest.raises(PromptError, match="prompt 1 is empty"):
        generate(tiny.model, tiny.tokenizer, [prompts[0], []], greedy(2))
    with pytest.raises(PromptError, match="outside"):
        generate(tiny.model, tiny.tokenizer, [[1, vocab]], greedy(2))
    with pytest.raises(PromptError, match="max_position_embeddings"):
        generate(tiny.model, tiny.tokenizer, [[1] * 512], greedy(2))


def test_length_budget_capped_by_context(tiny):
    (completion,) = generate(tiny.model, tiny.tokenizer, [[1] * 509], greedy(50))[0]
    assert len(completion.token_ids) <= 3


def test_no_prompts_gives_no_completions(tiny):
    stats = GenerationStats()
    assert generate(tiny.model, tiny.tokenizer, [], greedy(4), stats=stats) == []
    assert (stats.prompts, stats.new_tokens) == (0, 0)


def test_training_mode_restored(tiny, prompts):
    tiny.model.train()
    try:
        generate(tiny.model, tiny.tokenizer, prompts[:1], greedy(2))
        assert tiny.model.training
    finally:
        tiny.model.eval()


def test_samples_of_a_prompt_share_one_prefill_and_still_differ(tiny, prompts):
    rows_fed = []
    hook = tiny.model.get_input_embeddings().register_forward_hook(lambda _m, inputs, _o: rows_fed.append(inputs[0].shape))
    try:
        params = SamplingParams(max_new_tokens=6, temperature=1.0, batch_size=12, seed=5)
        out = generate(tiny.model, tiny.tokenizer, prompts[:3], params, num_samples=4)
    finally:
        hook.remove()
    assert rows_fed[0][0] == 3 and rows_fed[0][1] > 1  # the prefill: one row per prompt, not per sample
    assert rows_fed[1] == (12, 1)  # then one token for each of the 3 x 4 sampled rows
    assert all(len({tuple(c.token_ids) for c in samples}) > 1 for samples in out)


def test_greedy_samples_with_a_shared_prefix_match_a_single_completion(tiny):
    ids = [encode_chat_prompt(tiny.tokenizer, f"explain why the big red dog ran {t}") for t in ["fast", "under the mat"]]
    out = generate(tiny.model, tiny.tokenizer, ids, greedy(8, batch_size=4), num_samples=2,
                   shared_prefix_len=common_prefix_len(ids))
    for prompt, samples in zip(ids, out, strict=True):
        (single,) = generate(tiny.model, tiny.tokenizer, [prompt], greedy(8))[0]
        assert [c.token_ids for c in samples] == [single.token_ids] * 2
