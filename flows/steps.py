"""The steps of a self-rewarding run as plain functions: files in, files out, a small record back.

Each step computes a fingerprint of everything that defines its output (its config section, the
records of its inputs, the seed) and runs through `stepdir.run_step`, so a finished step is
never recomputed and an interrupted one restarts from a clean folder. The Prefect tasks in
`flows/iteration.py` wrap these functions; nothing here imports Prefect or MLflow.
"""

import json
import random
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from functools import lru_cache
from itertools import islice, tee, zip_longest
from pathlib import Path
from typing import Any

import torch

import dpo
import generation
import judging
from flows.stepdir import StepRecord, fingerprint, launch_rank, pause_point, run_step
from pipeline import demo_task
from pipeline.config import DPOConfig, RunConfig, SamplingConfig
from pipeline.evaluation import evaluate_model
from pipeline.models import build_tiny_model, build_tokenizer, load_model_and_tokenizer, select_device

LogFn = Callable[[dict[str, float], int], None]
MODEL_DIR = "model"
# Prompts judged per chunk: bounds the judge step's memory for any number of prompts (a fixed
# number, never machine-dependent, so a resumed run judges exactly the same chunks). Runs of up to
# this many prompts are judged in one chunk, exactly as before judging was streamed.
JUDGE_CHUNK_PROMPTS = 512


# ---------------------------------------------------------------- helpers


def _iter_jsonl(path: str | Path) -> Iterator[dict]:
    """The rows of a JSONL file, one at a time (memory bounded by the longest line)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _read_jsonl(path: str | Path) -> list[dict]:
    return list(_iter_jsonl(path))


def _iter_jsonl_pairs(first: Path, second: Path) -> Iterator[tuple[dict, dict]]:
    """The rows of two JSONL files in lockstep.

    Raises:
        ValueError: the files have different numbers of rows (both named, with their counts).
    """
    rows_a, rows_b = _iter_jsonl(first), _iter_jsonl(second)
    end = object()
    for count, (a, b) in enumerate(zip_longest(rows_a, rows_b, fillvalue=end)):
        if a is end or b is end:  # count what is left of the longer file for the message
            count_a = count + (a is not end) + sum(1 for _ in rows_a)
            count_b = count + (b is not end) + sum(1 for _ in rows_b)
            raise ValueError(f"{first} has {count_a} rows but {second} has {count_b}; expected one row per prompt in both")
        yield a, b


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write rows as they come (a generator is consumed lazily, so it can be streamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def set_torch_threads(config: RunConfig) -> None:
    """Apply `runtime.torch_threads` to this process (torch's CPU thread pool is per process)."""
    if config.runtime.torch_threads is not None:
        torch.set_num_threads(config.runtime.torch_threads)


def _flush_metrics(log_fn: LogFn | None) -> None:
    # A buffered log_fn (pipeline.tracking.MetricBuffer) must store the training curves before the
    # step is published: a resumed step does not train again, so it could not send them later.
    flush = getattr(log_fn, "flush", None)
    if flush is not None:
        flush()


def _sampling(cfg: SamplingConfig, seed: int) -> generation.SamplingParams:
    return generation.SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
        seed=seed,
    )


def model_dir(record: StepRecord) -> Path:
    """The `from_pretrained` directory a model-producing step wrote (or the user's model path)."""
    path = Path(record.path)
    return path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path


@lru_cache(maxsize=1)
def _cached_model(path: str, model_fingerprint: str, device: str, dtype: str):
    # Prompts, candidates, judging and evaluation of one iteration all read M_t: load it once.
    return load_model_and_tokenizer(path, device=device, dtype=dtype)


def load_for_inference(config: RunConfig, record: StepRecord):
    device = str(select_device(config.model.device))
    return _cached_model(str(model_dir(record)), record.fingerprint, device, config.model.dtype)


def load_for_training(config: RunConfig, record: StepRecord):
    # A fresh copy: training changes the weights in place, the cached one must stay M_t.
    return load_model_and_tokenizer(model_dir(record), device=select_device(config.model.device), dtype=config.model.dtype)


def _encode_example(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    prompt_ids = generation.encode_chat_prompt(tokenizer, prompt)
    response_ids = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt_ids, response_ids


def _save_model(model, tokenizer, out: Path) -> None:
    dpo.save_checkpoint(model, out)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------- seed data and base model


def prepare_data(config: RunConfig, run_dir: Path) -> StepRecord:
    """Seed data of the run (IFT, EFT, prompt pool, eval prompts), copied or generated."""
    data = config.data

    def build(tmp: Path) -> dict[str, Any]:
        tmp.mkdir(parents=True)
        if data.task == "demo_rules":
            demo_task.write_seed_data(
                tmp,
                seed=config.seed,
                num_ift=data.num_ift,
                num_eft=data.num_eft,
                num_seed_prompts=data.num_seed_prompts,
                num_eval=data.num_eval,
            )
        for name in ("ift", "eft", "seed_prompts", "eval_prompts"):
            source = getattr(data, name)
            if source is not None:  # user files replace the generated ones
                target = tmp / ("eval.jsonl" if name == "eval_prompts" else f"{name}.jsonl")
                shutil.copyfile(source, target)
        return {f.stem: sum(1 for _ in open(f, encoding="utf-8")) for f in sorted(tmp.glob("*.jsonl"))}

    return run_step("data", run_dir / "data", fingerprint("data", config.data.model_dump(), config.seed), build)[0]


def build_base_model(config: RunConfig, run_dir: Path, data: StepRecord) -> StepRecord:
    """M0: the user's pretrained model, or a tiny Llama and a BPE tokenizer trained on the seed data."""
    if config.model.path is not None:
        path = Path(config.model.path)
        load_model_and_tokenizer(path, device="cpu", dtype="float32")  # fail fast on a bad directory
        stats = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
        return StepRecord(step="base", path=str(path.resolve()), fingerprint=fingerprint("base", stats))
    tiny = config.model.tiny

    def build(tmp: Path) -> dict[str, Any]:
        corpus = _corpus(Path(data.path))
        tokenizer = build_tokenizer(corpus, tmp / "tokenizer", vocab_size=tiny.vocab_size)
        build_tiny_model(
            tokenizer,
            tmp / MODEL_DIR,
            hidden_size=tiny.hidden_size,
            num_layers=tiny.num_layers,
            num_heads=tiny.num_heads,
            intermediate_size=tiny.intermediate_size,
            max_position_embeddings=tiny.max_position_embeddings,
            seed=config.seed,
        )
        return {"vocab_size": len(tokenizer)}

    step_fp = fingerprint("base", tiny.model_dump(), data.fingerprint, config.seed)
    return run_step("base", run_dir / "base", step_fp, build)[0]


def _corpus(data_dir: Path) -> list[str]:
    corpus = data_dir / "tokenizer_corpus.txt"
    if corpus.is_file():
        return corpus.read_text(encoding="utf-8").splitlines()
    texts = []
    for name in ("ift.jsonl", "eft.jsonl", "seed_prompts.jsonl"):
        if (data_dir / name).is_file():
            texts += [v for row in _read_jsonl(data_dir / name) for v in row.values() if isinstance(v, str)]
    return texts


# ---------------------------------------------------------------- SFT: M0 -> M1


def train_sft(config: RunConfig, run_dir: Path, base: StepRecord, data: StepRecord, log_fn: LogFn | None = None) -> StepRecord:
    """Supervised fine-tuning on IFT + EFT seed data gives M1."""
    sft = config.sft

    def build(tmp: Path) -> dict[str, Any]:
        model, tokenizer = load_for_training(config, base)
        rows = _read_jsonl(Path(data.path) / "ift.jsonl")
        if (Path(data.path) / "eft.jsonl").is_file():
            rows += _read_jsonl(Path(data.path) / "eft.jsonl")
        examples = [_encode_example(tokenizer, r["prompt"], r["response"]) for r in rows]
        dataset = dpo.SFTDataset.from_pairs(examples, max_len=sft.max_len)
        trainer = dpo.SFTTrainer(model, train_dataset=dataset, log_fn=log_fn, seed=config.seed, **_optim_kwargs(sft))
        summary = trainer.train()
        _flush_metrics(log_fn)
        _save_model(model, tokenizer, tmp / MODEL_DIR)
        return {"examples": len(examples), **_scalars(summary)}

    step_fp = fingerprint("sft", sft.model_dump(), base.fingerprint, data.fingerprint, config.seed)
    return run_step("sft", run_dir / "sft", step_fp, build)[0]


def _optim_kwargs(cfg) -> dict[str, Any]:
    return {
        "batch_size": cfg.batch_size,
        "grad_accum_steps": cfg.grad_accum_steps,
        "start_learning_rate": cfg.start_learning_rate,
        "end_learning_rate": cfg.end_learning_rate,
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "dropout": cfg.dropout,
        "num_train_steps": cfg.num_train_steps,
        "num_epochs": cfg.num_epochs,
    }


def _scalars(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, int | float | bool | str)}


# ---------------------------------------------------------------- one iteration: M_t -> M_{t+1}


def _iter_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / f"iter-{iteration}"


def _step_seed(config: RunConfig, iteration: int, salt: int) -> int:
    return config.seed * 1_000_003 + iteration * 101 + salt


def generate_prompts(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, data: StepRecord) -> StepRecord:
    """New prompts for this iteration: self-instruct by M_t from the seed pool, or drawn from it."""
    cfg = config.iteration_config(iteration).prompts
    seed = _step_seed(config, iteration, 1)

    def build(tmp: Path) -> dict[str, Any]:
        pool = [r["prompt"] for r in _read_jsonl(Path(data.path) / "seed_prompts.jsonl")]
        counts: dict[str, Any] = {}
        if cfg.source == "seed":
            prompts = random.Random(seed).sample(pool, min(cfg.num_prompts, len(pool)))
        else:
            policy, tokenizer = load_for_inference(config, model)
            result = generation.generate_prompts(
                policy,
                tokenizer,
                pool,
                num_prompts=cfg.num_prompts,
                shots=cfg.shots,
                params=_sampling(cfg.sampling, seed),
                filters=generation.PromptFilter(
                    min_chars=cfg.min_chars, max_chars=cfg.max_chars, max_rouge_l=cfg.max_rouge_l
                ),
            )
            prompts, counts = result.prompts, dict(result.rejected)
        _write_jsonl(tmp / "prompts.jsonl", [{"prompt": p} for p in prompts])
        return {"prompts": len(prompts), "rejected": counts}

    step_fp = fingerprint("prompts", cfg.model_dump(), model.fingerprint, data.fingerprint, seed)
    return run_step("prompts", _iter_dir(run_dir, iteration) / "prompts", step_fp, build)[0]


def sample_candidates(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, prompts: StepRecord) -> StepRecord:
    """N candidate responses per prompt from M_t."""
    cfg = config.iteration_config(iteration).candidates
    seed = _step_seed(config, iteration, 2)

    def build(tmp: Path) -> dict[str, Any]:
        policy, tokenizer = load_for_inference(config, model)
        texts = [r["prompt"] for r in _read_jsonl(Path(prompts.path) / "prompts.jsonl")]
        prompt_ids = [generation.encode_chat_prompt(tokenizer, t) for t in texts]
        stats = generation.GenerationStats()
        outputs = generation.generate(policy, tokenizer, prompt_ids, _sampling(cfg.sampling, seed), cfg.num, stats)
        rows = [
            {
                "prompt": text,
                "prompt_ids": ids,
                "candidates": [{"text": c.text, "token_ids": c.token_ids, "finished": c.finished} for c in completions],
            }
            for text, ids, completions in zip(texts, prompt_ids, outputs, strict=True)
        ]
        _write_jsonl(tmp / "candidates.jsonl", rows)
        return {"sequences": stats.sequences, "new_tokens": stats.new_tokens, "tokens_per_second": stats.tokens_per_second}

    step_fp = fingerprint("candidates", cfg.model_dump(), model.fingerprint, prompts.fingerprint, seed)
    return run_step("candidates", _iter_dir(run_dir, iteration) / "candidates", step_fp, build)[0]


def judge_candidates(config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, candidates: StepRecord) -> StepRecord:
    """M_t judges its own candidates K times each (or an external reward function scores them).

    Streamed: candidates.jsonl is read and judged `JUDGE_CHUNK_PROMPTS` prompts at a time (at least
    one judge batch) and each chunk's rows are appended to judgments.jsonl, so memory does not grow
    with the number of prompts. The summary counts all chunks.
    """
    cfg = config.iteration_config(iteration).judge
    seed = _step_seed(config, iteration, 3)
    chunk_size = max(JUDGE_CHUNK_PROMPTS, cfg.sampling.batch_size)

    def build(tmp: Path) -> dict[str, Any]:
        stats = judging.JudgingStats()
        if cfg.reward_fn:
            reward_fn = judging.load_reward_fn(cfg.reward_fn)

            def judge(prompts: list[str], texts: list[list[str]], chunk: int) -> list[list[judging.CandidateJudgment]]:
                return judging.score_with_reward_fn(reward_fn, prompts, texts, stats=stats)
        else:
            policy, tokenizer = load_for_inference(config, model)
            template = judging.load_template(cfg.template)

            def judge(prompts: list[str], texts: list[list[str]], chunk: int) -> list[list[judging.CandidateJudgment]]:
                # Chunk 0 keeps the step's seed; later chunks get their own sampling streams
                # instead of replaying chunk 0's random numbers.
                chunk_seed = seed if chunk == 0 else int(fingerprint("judge-chunk", seed, chunk), 16) % 2**63
                return judging.judge_candidates(
                    policy,
                    tokenizer,
                    prompts,
                    texts,
                    template=template,
                    num_judgments=cfg.num_judgments,
                    params=_sampling(cfg.sampling, chunk_seed),
                    stats=stats,
                )

        def judged_rows() -> Iterator[dict]:
            # Only the texts of each row are kept (not the token ids), one chunk at a time.
            rows = _iter_jsonl(Path(candidates.path) / "candidates.jsonl")
            texts_by_prompt = ((r["prompt"], [c["text"] for c in r["candidates"]]) for r in rows)
            chunk = 0
            while batch := list(islice(texts_by_prompt, chunk_size)):
                prompts, texts = [p for p, _ in batch], [t for _, t in batch]
                for row in judge(prompts, texts, chunk):
                    yield {"candidates": [asdict(j) for j in row]}
                chunk += 1

        _write_jsonl(tmp / "judgments.jsonl", judged_rows())
        return stats.summary()

    step_fp = fingerprint("judge", cfg.model_dump(), model.fingerprint, candidates.fingerprint, seed)
    return run_step("judge", _iter_dir(run_dir, iteration) / "judgments", step_fp, build)[0]


def build_pairs(
    config: RunConfig, iteration: int, run_dir: Path, candidates: StepRecord, judgments: StepRecord
) -> StepRecord:
    """One preference pair per prompt by `pairs.strategy` (ties dropped), streamed into the DPO memmaps.

    candidates.jsonl and judgments.jsonl are read row by row in lockstep (memory does not grow with
    the number of prompts); files with different row counts raise ValueError naming both.
    """
    cfg = config.iteration_config(iteration)
    seed = _step_seed(config, iteration, 5)

    def build(tmp: Path) -> dict[str, Any]:
        rows = _iter_jsonl_pairs(Path(candidates.path) / "candidates.jsonl", Path(judgments.path) / "judgments.jsonl")
        # One pass over the files feeds the four per-prompt streams; they advance together, so
        # tee buffers at most one row.
        r1, r2, r3, r4 = tee(rows, 4)
        result = judging.build_preference_pairs(
            tmp,
            (c["prompt"] for c, _ in r1),
            (c["prompt_ids"] for c, _ in r2),
            ([generation.Completion(**x) for x in c["candidates"]] for c, _ in r3),
            ([judging.CandidateJudgment(**x) for x in j["candidates"]] for _, j in r4),
            max_len=cfg.dpo.max_len,
            strategy=cfg.pairs.strategy,
            rho=cfg.pairs.rho,
            seed=seed,
        )
        return result.summary()

    step_fp = fingerprint("pairs", cfg.pairs.model_dump(), cfg.dpo.max_len, candidates.fingerprint, judgments.fingerprint, seed)
    return run_step("pairs", _iter_dir(run_dir, iteration) / "pairs", step_fp, build)[0]


def train_dpo(
    config: RunConfig, iteration: int, run_dir: Path, model: StepRecord, pairs: StepRecord, log_fn: LogFn | None = None
) -> StepRecord:
    """DPO on this iteration's pairs: the policy starts at M_t and the reference is reset to M_t.

    With `dpo.checkpoint_every`, the training state is saved in `<iter>/.dpo-state/<fingerprint>/`
    (beside the step's temp folder, so restarting the step keeps it) and a killed step resumes from
    it; the folder is deleted once the step has published its checkpoint.

    Raises:
        dpo.NonFiniteLossError: the loss became NaN/inf; the run stops (nothing is published for
            this step, M_t stays the latest model).
    """
    cfg: DPOConfig = config.iteration_config(iteration).dpo
    seed = _step_seed(config, iteration, 4)
    iter_dir = _iter_dir(run_dir, iteration)
    step_fp = fingerprint("dpo", cfg.model_dump(), model.fingerprint, pairs.fingerprint, seed)
    state_root = iter_dir / ".dpo-state"

    def on_step(metrics: dict[str, float], step: int) -> None:
        if log_fn is not None:
            log_fn(metrics, step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                _flush_metrics(log_fn)  # the resumable state saved after this step must not outrun MLflow
        pause_point(f"{iter_dir.name}/dpo@{step}", iter_dir)

    def build(tmp: Path) -> dict[str, Any]:
        policy, tokenizer = load_for_training(config, model)
        if pairs.summary.get("pairs", 0) == 0:
            # Every prompt tied or failed to parse: nothing to learn from, M_{t+1} = M_t.
            _save_model(policy, tokenizer, tmp / MODEL_DIR)
            return {"skipped": "no preference pairs", "steps": 0}
        if launch_rank() == 0:
            for stale in state_root.glob("*"):  # states of other inputs (and temp folders) are never resumed
                if stale.name != step_fp:
                    shutil.rmtree(stale, ignore_errors=True)
        model_with_ref = dpo.DPO(
            policy,
            beta=cfg.beta,
            loss_type=cfg.loss_type,
            label_smoothing=cfg.label_smoothing,
            nll_weight=cfg.nll_weight,
            reduction=cfg.reduction,
            share_prompt=cfg.share_prompt,
        )
        trainer = dpo.DPOTrainer(
            model_with_ref,
            dataset_generator=lambda: dpo.DPODataset(pairs.path, vocab_size=len(tokenizer)),
            precompute_ref_logps=cfg.precompute_ref_logps,
            log_fn=on_step,
            seed=seed,
            checkpoint_every=cfg.checkpoint_every,
            state_dir=state_root / step_fp,
            **_optim_kwargs(cfg),
        )
        try:
            summary = trainer.train()  # calls the generator, then resets the reference to the policy (M_t)
            _flush_metrics(log_fn)
        except dpo.NonFiniteLossError as err:
            raise dpo.NonFiniteLossError(
                f"{iter_dir.name} DPO: {err}. The run stops here: nothing is published for this step and "
                f"M_{iteration} stays the latest model; lower iteration.dpo.start_learning_rate (or beta) "
                f"and start a new run"
            ) from err
        _save_model(policy, tokenizer, tmp / MODEL_DIR)
        return _scalars(summary)

    record = run_step("dpo", iter_dir / "checkpoint", step_fp, build)[0]
    if launch_rank() == 0:
        shutil.rmtree(state_root, ignore_errors=True)  # the published checkpoint supersedes it
    return record


# ---------------------------------------------------------------- evaluation


def evaluate(config: RunConfig, stage: str, run_dir: Path, model: StepRecord, data: StepRecord) -> StepRecord:
    """Held-out evaluation of a stage's model (ground truth for the demo task, self-judged otherwise)."""

    def build(tmp: Path) -> dict[str, Any]:
        policy, tokenizer = load_for_inference(config, model)
        metrics, samples = evaluate_model(policy, tokenizer, config, Path(data.path))
        _write_jsonl(tmp / "samples.jsonl", samples)
        return metrics

    step_fp = fingerprint("eval", config.eval.model_dump(), config.iteration.judge.model_dump(), model.fingerprint, data.fingerprint)
    return run_step("eval", run_dir / stage / "eval", step_fp, build)[0]
