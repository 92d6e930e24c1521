"""pipeline.evaluation on the demo task: ground-truth metrics of greedy and sampled answers."""

import pytest

from generation import SamplingParams, encode_chat_prompt, generate
from pipeline import demo_task
from pipeline.config import load_config
from pipeline.evaluation import SAMPLES_PER_PROMPT, evaluate_model
from tests._tiny import build_tiny

OVERRIDES = ["data.num_eval=6", "eval.max_new_tokens=10", "eval.num_judge_pairs=0", "seed=3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained tiny Llama on the demo task's tokenizer, and the demo seed data (6 eval prompts)."""
    root = tmp_path_factory.mktemp("eval")
    paths = demo_task.write_seed_data(root / "data", seed=0, num_ift=16, num_eft=16, num_seed_prompts=8, num_eval=6)
    texts = paths["tokenizer_corpus"].read_text(encoding="utf-8").splitlines()
    tiny = build_tiny(root, texts, vocab_size=300, max_position_embeddings=128, num_layers=1, num_heads=2,
                      initializer_range=0.02)
    model, tokenizer = tiny.model, tiny.tokenizer
    return model, tokenizer, root / "data"


def test_sampled_score_is_the_checker_mean_over_the_sampled_answers(tiny):
    model, tokenizer, data = tiny
    config = load_config(None, OVERRIDES)
    metrics, samples = evaluate_model(model, tokenizer, config, data)
    prompts = [s["prompt"] for s in samples]
    # Independent recomputation: the same draws (same seed and sampling), scored one by one.
    s = config.iteration.candidates.sampling
    params = SamplingParams(max_new_tokens=10, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                            batch_size=s.batch_size, seed=3)
    outputs = generate(model, tokenizer, [encode_chat_prompt(tokenizer, p) for p in prompts], params,
                       num_samples=SAMPLES_PER_PROMPT)
    scores = [demo_task.check(p, c.text).score for p, outs in zip(prompts, outputs) for c in outs]
    assert len(scores) == 6 * SAMPLES_PER_PROMPT
    assert metrics["gt_score_sampled"] == pytest.approx(sum(scores) / len(scores))
    assert metrics["gt_score"] == pytest.approx(
        sum(demo_task.check(x["prompt"], x["response"]).score for x in samples) / len(samples))


def test_sampled_score_at_temperature_zero_equals_the_greedy_score(tiny):
    model, tokenizer, data = tiny
    config = load_config(None, [*OVERRIDES, "iteration.candidates.sampling.temperature=0"])
    metrics, _ = evaluate_model(model, tokenizer, config, data)
    assert metrics["gt_score_sampled"] == pytest.approx(metrics["gt_score"])
