"""Held-out evaluation of a stage's model.

For the built-in demo task the ground-truth checker scores greedy answers (`gt_score`,
`gt_success`), and sampled answers at the candidates' temperature (`gt_score_sampled`: the
distribution the loop samples from, which moves before the greedy answer does) and measures how often the model's own judge orders two responses as the checker
does (`judge_pairwise_accuracy`, the paper's reward-model accuracy). This is the only place the
checker is used: training rewards come from the model's judgments alone. For other data the
model's own judge scores its greedy answers (`self_judge_score`).
"""

import json
import random
from pathlib import Path
from typing import Any

import generation
import judging
from pipeline import demo_task
from pipeline.config import RunConfig

# Sampled answers per held-out prompt for `gt_score_sampled` (short answers: cheap next to judging).
SAMPLES_PER_PROMPT = 4


def _eval_prompts(data_dir: Path) -> list[str]:
    path = data_dir / "eval.jsonl"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def prompt_quality(config: RunConfig, prompts: list[str]) -> dict[str, float]:
    """For the built-in task: the share of generated prompts that are valid tasks of its family
    (evaluation only: the prompts step reports it, nothing filters on it). Empty otherwise."""
    if config.data.task != "demo_rules" or not prompts:
        return {}
    return {"valid_task_share": sum(_is_demo_task(p) for p in prompts) / len(prompts)}


def _is_demo_task(prompt: str) -> bool:
    try:
        demo_task.parse_instruction(prompt)
    except demo_task.InstructionParseError:
        return False
    return True


def _judge_params(config: RunConfig) -> generation.SamplingParams:
    return config.iteration.judge.sampling.to(generation.SamplingParams, seed=config.seed)


def evaluate_model(model, tokenizer, config: RunConfig, data_dir: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics and sample answers of `model` on the held-out prompts of the run's seed data."""
    prompts = _eval_prompts(data_dir)
    if not prompts:
        return {}, []
    greedy = generation.SamplingParams(
        max_new_tokens=config.eval.max_new_tokens, temperature=0.0, batch_size=config.iteration.candidates.sampling.batch_size
    )
    ids = [generation.encode_chat_prompt(tokenizer, p) for p in prompts]
    answers = [c[0].text for c in generation.generate(model, tokenizer, ids, greedy)]
    samples = [{"prompt": p, "response": a} for p, a in zip(prompts, answers)]
    template = judging.load_template(config.iteration.judge.template)
    if config.data.task == "demo_rules":
        metrics = demo_task.evaluate_responses(prompts, answers)
        metrics["gt_score_sampled"] = _sampled_gt_score(model, tokenizer, config, prompts, ids)
        if config.eval.num_judge_pairs:
            metrics["judge_pairwise_accuracy"] = _judge_accuracy(model, tokenizer, config, prompts, template)
        return metrics, samples
    judged = judging.judge_responses(
        model, tokenizer, prompts, [[a] for a in answers], template=template,
        num_judgments=config.iteration.judge.num_judgments, params=_judge_params(config),
    )
    scores = [j[0].score for j in judged if j[0].score is not None]
    metrics = {
        "self_judge_score": sum(scores) / len(scores) if scores else float("nan"),
        "mean_response_length": sum(len(a) for a in answers) / len(answers),
    }
    return metrics, samples


def _sampled_gt_score(model, tokenizer, config: RunConfig, prompts: list[str], ids: list[list[int]]) -> float:
    """Mean ground-truth score of answers sampled as the iterations sample their candidates."""
    params = config.iteration.candidates.sampling.to(
        generation.SamplingParams, max_new_tokens=config.eval.max_new_tokens, seed=config.seed
    )
    outputs = generation.generate(model, tokenizer, ids, params, num_samples=SAMPLES_PER_PROMPT)
    flat_prompts = [p for p, outs in zip(prompts, outputs) for _ in outs]
    return demo_task.evaluate_responses(flat_prompts, [c.text for outs in outputs for c in outs])["gt_score"]


def _judge_accuracy(model, tokenizer, config: RunConfig, prompts: list[str], template) -> float:
    """The model judges two responses of different true quality per prompt; how often it agrees."""
    rng = random.Random(config.seed)
    prompts = prompts[: config.eval.num_judge_pairs]
    pairs = []
    for prompt in prompts:
        spec = demo_task.parse_instruction(prompt)
        broken_a, broken_b = rng.sample(range(demo_task.MAX_POINTS + 1), 2)
        pairs.append([demo_task.corrupt_response(spec, rng, broken_a), demo_task.corrupt_response(spec, rng, broken_b)])
    judged = judging.judge_responses(
        model, tokenizer, prompts, pairs, template=template,
        num_judgments=config.iteration.judge.num_judgments, params=_judge_params(config),
    )
    truth = [[demo_task.check(p, r).points for r in pair] for p, pair in zip(prompts, pairs)]
    return demo_task.pairwise_judge_accuracy(
        [t[0] for t in truth], [t[1] for t in truth], [j[0].score for j in judged], [j[1].score for j in judged]
    )
