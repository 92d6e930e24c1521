"""The candidates step: a prompts file in, one row per prompt with N completions out, read back intact."""

from generation import (
    CANDIDATES_FILE,
    PROMPTS_FILE,
    Completion,
    SamplingParams,
    encode_chat_prompt,
    generate,
    read_candidates,
    read_prompt_file,
    sample_candidates,
    sample_pool,
    write_prompt_file,
)

PROMPTS = ["why the cat sat", "list red trees", "how big"]
PARAMS = SamplingParams(max_new_tokens=6, temperature=1.0, seed=4)


def test_candidates_file_holds_what_generate_samples_in_prompt_order(tiny, tmp_path):
    assert write_prompt_file(tmp_path / PROMPTS_FILE, PROMPTS) == 3
    summary = sample_candidates(tiny.model, tiny.tokenizer, tmp_path / PROMPTS_FILE, tmp_path / "out", num_samples=2,
                                params=PARAMS)
    rows = list(read_candidates(tmp_path / "out" / CANDIDATES_FILE))
    ids = [encode_chat_prompt(tiny.tokenizer, p) for p in PROMPTS]
    expected = generate(tiny.model, tiny.tokenizer, ids, PARAMS, num_samples=2)
    assert [r.prompt for r in rows] == PROMPTS and [r.prompt_ids for r in rows] == ids
    assert [r.candidates for r in rows] == expected
    assert summary.stats.sequences == 6 and summary.stats.new_tokens == sum(len(c.token_ids) for e in expected for c in e)
    assert summary.distinct_share == sum(len({c.text for c in e}) / 2 for e in expected) / 3


def test_records_round_trip_through_json(tmp_path):
    completion = Completion(token_ids=[5, 2], text="a", finished=True)
    assert Completion.from_json(completion.to_json()) == completion
    write_prompt_file(tmp_path / PROMPTS_FILE, [])
    assert read_prompt_file(tmp_path / PROMPTS_FILE) == []  # an empty iteration is a valid file


def test_a_pool_draw_is_seeded_and_never_repeats():
    pool = [f"p{i}" for i in range(20)]
    draw = sample_pool(pool, 5, seed=1)
    assert draw == sample_pool(pool, 5, seed=1) != sample_pool(pool, 5, seed=2)
    assert len(set(draw)) == 5 and sorted(sample_pool(pool, 50, seed=1)) == sorted(pool)
