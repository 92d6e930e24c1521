"""GPU figures: DPO vs TRL, LoRA vs full DPO, and the native engine vs plain HF generate, on one CUDA GPU.

Run on a lent GPU machine (`python benchmarks/bench_gpu.py`; `make bench` skips it without CUDA). The
CPU benchmarks (bench_dpo.py, bench_lora.py, bench_engines.py) define the contenders; this script runs
the same ones at a GPU's scale, with a GPU's precision:

    dpo      ours (reference log-probs precomputed, the default) vs TRL's DPOTrainer, bf16 mixed precision
             for both (fp32 weights and AdamW state, forward passes under bf16 autocast: TRL's `bf16=True`,
             our `ComputeSettings(autocast="bf16")`); a Llama of ~370M parameters; tokens/s as bench_dpo.py
             counts them; the losses of both at every step
    lora     full DPO vs LoRA (r 16, all linear layers), each with and without gradient checkpointing, same
             model, precision and data: peak CUDA memory the run adds (`max_memory_allocated` minus what
             was allocated at its start: the DPO objective, the trainer, train()) and tokens/s
    engines  the candidates and judge workloads of an iteration (N=16 samples per prompt, K=3 judgments
             per candidate with the demo's judge template) on the same ~300M Llama in bf16 weights:
             ours (`generation.generate`, `judging.judge_responses`) vs HF `model.generate` on batches
             of the same size. EOS is ignored by both (random weights), so every sequence produces
             exactly `max_new_tokens`. vLLM is not a contender here: the GPU machine has no vLLM and
             cannot download one, and its CUDA wheel is larger than what can be carried there.

Contenders alternate (A, B, A, B, ...), medians reported, and each run's time ends with a CUDA
synchronize. One process; the CUDA allocator's peak is reset before each measured run.
"""

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import bench_dpo
from bench_lora import CONTENDERS as LORA_CONTENDERS
from bench_lora import LORA, _state_bytes, make_trainer
from bench_sampling import (
    Workload,
    _hf_split,
    _NoEosTokenizer,
    _time,
    ours_candidates,
    ours_judge,
    sampling_params,
)
from common import (
    ROOT,
    CudaPeakMemory,
    alternating,
    format_table,
    median,
    now,
    parse_args,
    print_header,
    quiet_stdio,
    setup_torch,
    synchronized_now,
    write_result,
)
from dpo_setup import Setup, build_model, make_pairs, param_counts, trained_tokens, write_pairs

NAME = "gpu"
DPO_SETUP = Setup(hidden=1024, layers=24, heads=16, intermediate=2816, vocab=32000, batch_size=8,
                  steps_per_epoch=8, epochs=2, max_len=640, prompt_len=(64, 128), response_len=(64, 256),
                  learning_rate=1e-5, repeats=3)
# --large: a 1.3B-param Llama and 4x longer rows, where a step is closer to compute-bound.
LARGE_SETUP = replace(DPO_SETUP, hidden=2048, intermediate=5632, max_len=1280, prompt_len=(128, 256),
                      response_len=(256, 512))
QUICK_SETUP = replace(DPO_SETUP, hidden=256, layers=2, heads=4, intermediate=688, vocab=4096, steps_per_epoch=2,
                      repeats=1)
ENGINE = {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 2816}
QUICK_ENGINE = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 344}


# ---------------------------------------------------------------- DPO: ours vs TRL


def dpo_vs_trl(setup: Setup, tmp: Path) -> dict[str, Any]:
    pairs = make_pairs(setup)
    tokens = trained_tokens(pairs) * setup.epochs
    pairs_dir = write_pairs(pairs, tmp / "pairs")
    bench_dpo.run_ours(replace(setup, steps_per_epoch=1, epochs=1), pairs_dir, tokens, True, name="warmup", gpu=True)
    results = []
    for repeat, name in alternating(["ours-precompute", "trl"], setup.repeats):
        if name == "trl":
            result = bench_dpo.run_trl(setup, pairs, tokens, repeat, logging_steps=1, gpu=True)
        else:
            result = bench_dpo.run_ours(setup, pairs_dir, tokens, True, repeat, gpu=True)
        results.append(result)
        print(f"  dpo run {repeat} {name:16s} {result.tokens_per_s:9.0f} tok/s  train {result.train_s:6.2f} s  "
              f"peak +{result.rss_delta_mib:.0f} MiB", flush=True)
    rows = bench_dpo.summarize(results)
    trl = next(r for r in rows if r["contender"] == "trl")
    for row in rows:
        row["ratio_vs_trl"] = row["tokens_per_s_median"] / trl["tokens_per_s_median"]
    # Step 1 is log 2 for both (policy == reference); later steps see the pairs in each trainer's own
    # shuffled order, so they differ (bench_dpo.py's equivalence check compares the maths exactly).
    ours_losses = next(r.losses for r in results if r.contender == "ours-precompute")
    trl_losses = next(r.losses for r in results if r.contender == "trl")
    print(format_table(
        ["contender", "runs", "tok/s", "vs TRL", "train s", "steady step s", "peak CUDA +MiB", "final loss"],
        [[r["contender"], r["runs"], r["tokens_per_s_median"], f"{r['ratio_vs_trl']:.2f}x", r["train_s_median"],
          r["steady_step_s_median"], r["rss_delta_mib_median"], r["final_loss_median"]] for r in rows]))
    print(f"  step-1 loss ours {ours_losses[0]:.4f}, TRL {trl_losses[0]:.4f} (log 2 = 0.6931); final loss ours "
          f"{ours_losses[-1]:.4f}, TRL {trl_losses[-1]:.4f} (different data order)")
    return {"setup": asdict(setup), "trained_tokens": tokens, "summary": rows,
            "losses": {"ours": ours_losses, "trl": trl_losses},
            "runs": [{**asdict(r), "tokens_per_s": r.tokens_per_s} for r in results]}


# ---------------------------------------------------------------- LoRA vs full DPO


def lora_run(setup: Setup, pairs_dir: Path, tokens: int, contender: str) -> dict[str, Any]:
    """One DPO round of `contender` (`bench_lora.make_trainer`, bf16 autocast); memory measured from before
    the DPO objective is built."""
    import torch

    policy = build_model(setup, gpu=True)
    losses: list[float] = []
    with CudaPeakMemory() as mem, quiet_stdio():
        trainer = make_trainer(policy, setup, pairs_dir, contender,
                               lambda metrics, step: losses.append(float(metrics["loss"])), autocast="bf16")
        start = now()
        trainer.train()
        train_s = synchronized_now(True) - start
    result = {"contender": contender, "tokens_per_s": tokens / train_s, "train_s": train_s,
              "peak_rise_mib": mem.delta_mib, "first_loss": losses[0], "final_loss": losses[-1],
              **_state_bytes(trainer)}
    del trainer, policy
    torch.cuda.empty_cache()
    return result


def lora_vs_full(setup: Setup, tmp: Path) -> dict[str, Any]:
    pairs = make_pairs(setup)
    tokens = trained_tokens(pairs) * setup.epochs
    pairs_dir = write_pairs(pairs, tmp / "lora-pairs")
    lora_run(replace(setup, steps_per_epoch=1, epochs=1), pairs_dir, tokens, "lora")  # warm-up
    results = []
    for _, name in alternating(LORA_CONTENDERS, max(1, setup.repeats - 1)):
        results.append(lora_run(setup, pairs_dir, tokens, name))
        r = results[-1]
        print(f"  lora run {name:8s} {r['tokens_per_s']:9.0f} tok/s  peak +{r['peak_rise_mib']:.0f} MiB  "
              f"state {r['state_bytes'] / 2**20:.0f} MiB", flush=True)
    rows = []
    for name in LORA_CONTENDERS:
        runs = [r for r in results if r["contender"] == name]
        rows.append({"contender": name, "runs": len(runs), "trainable_params": runs[0]["trainable_params"],
                     **{f"{k}_median": median([r[k] for r in runs])
                        for k in ("tokens_per_s", "peak_rise_mib", "state_bytes", "final_loss")}})
    by_name = {r["contender"]: r for r in rows}
    ratios = [{"ratio": f"{a} / {b}",
               "peak_rise": by_name[a]["peak_rise_mib_median"] / by_name[b]["peak_rise_mib_median"],
               "tokens_per_s": by_name[a]["tokens_per_s_median"] / by_name[b]["tokens_per_s_median"]}
              for a, b in (("lora", "full"), ("lora+gc", "full+gc"), ("lora+gc", "full"))]
    print(format_table(
        ["contender", "runs", "trainable", "tok/s", "peak CUDA +MiB", "state MiB", "final loss"],
        [[r["contender"], r["runs"], r["trainable_params"], r["tokens_per_s_median"], r["peak_rise_mib_median"],
          r["state_bytes_median"] / 2**20, r["final_loss_median"]] for r in rows]))
    print(format_table(["ratio", "peak CUDA memory", "tokens/s"],
                       [[r["ratio"], f"{r['peak_rise']:.2f}x", f"{r['tokens_per_s']:.2f}x"] for r in ratios]))
    return {"setup": asdict(setup), "lora": LORA, "summary": rows, "ratios": ratios, "runs": results}


# ---------------------------------------------------------------- engines: ours vs HF generate


def engines(quick: bool, tmp: Path) -> dict[str, Any]:
    from generation import encode_chat_prompt
    from judging import load_template
    from pipeline import demo_task
    from pipeline.config import load_config
    from pipeline.models import load_model_and_tokenizer
    from pipeline.tiny_model import build_tiny_model, build_tokenizer

    config = load_config(ROOT / "configs" / "demo.yaml")
    it = config.iteration_config(1)
    num_prompts, n, k, batch = (8, 4, 3, 32) if quick else (64, 16, 3, 512)
    template = load_template(it.judge.template)
    cand = replace(sampling_params(it.candidates.sampling, batch), max_new_tokens=128)
    judge = sampling_params(it.judge.sampling, batch, seed=1)
    with quiet_stdio():
        paths = demo_task.write_seed_data(tmp / "data", seed=config.seed, num_seed_prompts=num_prompts)
        corpus = paths["tokenizer_corpus"].read_text(encoding="utf-8").splitlines()
        tokenizer = build_tokenizer(corpus, tmp / "tokenizer", vocab_size=config.model.tiny.vocab_size)
        model_dir = build_tiny_model(tokenizer, tmp / "engine-model", **(QUICK_ENGINE if quick else ENGINE),
                                     max_position_embeddings=2048, seed=config.seed)
        model, tokenizer = load_model_and_tokenizer(model_dir, device="cuda", dtype="bfloat16")
    model.generation_config.eos_token_id = None
    no_eos = _NoEosTokenizer(tokenizer, model.config.vocab_size + 1000)
    prompts = [json.loads(line)["prompt"] for line in paths["seed_prompts"].read_text().splitlines() if line]
    prompts = prompts[:num_prompts]
    prompt_ids = [encode_chat_prompt(tokenizer, p) for p in prompts]
    _, candidates = ours_candidates(model, no_eos, prompt_ids, cand, n)  # shared by both contenders, untimed
    judge_ids = [(lambda p=p, c=c: encode_chat_prompt(tokenizer, template.render(p, c)))
                 for p, row in zip(prompts, candidates) for c in row]
    new_tokens = (num_prompts * n * cand.max_new_tokens, num_prompts * n * k * judge.max_new_tokens)

    def ours() -> tuple[float, float]:
        (cand_s, cand_tokens), (judge_s, judge_tokens) = (
            _time(lambda: ours_candidates(model, no_eos, prompt_ids, cand, n)[0], gpu=True),
            _time(lambda: ours_judge(model, no_eos, prompts, candidates, template, judge, k), gpu=True))
        assert (cand_tokens, judge_tokens) == new_tokens  # equal work: the full budget, as HF's
        return cand_s, judge_s

    def hf() -> tuple[float, float]:
        (cand_s, cand_tokens), (judge_s, judge_tokens) = _hf_split(
            model, tokenizer, prompt_ids, judge_ids, cand, judge, Workload(num_prompts, n, k), max(1, batch // n))
        assert (cand_tokens, judge_tokens) == new_tokens
        return cand_s, judge_s

    contenders = {"ours": ours, "hf-batched": hf}
    for fn in contenders.values():
        fn()  # warm-up: kernels, allocator
    runs = []
    for repeat, name in alternating(list(contenders), 1 if quick else 3):
        cand_s, judge_s = contenders[name]()
        runs.append({"contender": name, "repeat": repeat, "candidate_s": cand_s, "judge_s": judge_s,
                     "candidate_tokens_per_s": new_tokens[0] / cand_s, "judge_tokens_per_s": new_tokens[1] / judge_s})
        print(f"  engine run {repeat} {name:10s} candidates {new_tokens[0] / cand_s:9.0f} tok/s  judging "
              f"{new_tokens[1] / judge_s:9.0f} tok/s", flush=True)
    rows = [{"contender": name, **{f"{key}_median": median([r[key] for r in runs if r["contender"] == name])
                                   for key in ("candidate_tokens_per_s", "judge_tokens_per_s")}}
            for name in contenders]
    hf_row = rows[1]
    for row in rows:
        row["candidates_vs_hf"] = row["candidate_tokens_per_s_median"] / hf_row["candidate_tokens_per_s_median"]
        row["judging_vs_hf"] = row["judge_tokens_per_s_median"] / hf_row["judge_tokens_per_s_median"]
    print(format_table(["contender", "candidates tok/s", "vs HF", "judging tok/s", "vs HF"],
                       [[r["contender"], r["candidate_tokens_per_s_median"], f"{r['candidates_vs_hf']:.2f}x",
                         r["judge_tokens_per_s_median"], f"{r['judging_vs_hf']:.2f}x"] for r in rows]))
    return {"model": {**(QUICK_ENGINE if quick else ENGINE), "vocab": model.config.vocab_size,
                      "params": sum(p.numel() for p in model.parameters()), "dtype": "bfloat16"},
            "workload": {"prompts": num_prompts, "n": n, "k": k, "batch_size": batch,
                         "candidate_new_tokens": cand.max_new_tokens, "judge_new_tokens": judge.max_new_tokens},
            "new_tokens": {"candidates": new_tokens[0], "judging": new_tokens[1]}, "summary": rows, "runs": runs}


# ---------------------------------------------------------------- main


def main() -> None:
    def extra(parser) -> None:
        parser.add_argument("--parts", default="dpo,lora,engines", help="comma-separated subset of dpo,lora,engines")
        parser.add_argument("--large", action="store_true", help="DPO and LoRA on LARGE_SETUP (writes gpu-large.json)")

    args = parse_args(__doc__.splitlines()[0], extra)
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; skipped (run it on a GPU machine)")
        return
    started = now()
    setup_torch(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 matmuls stay fp32: the same maths as on the CPU
    setup = QUICK_SETUP if args.quick else LARGE_SETUP if args.large else DPO_SETUP
    counts = param_counts(build_model(setup, gpu=True))
    print_header(f"GPU figures on {torch.cuda.get_device_name()}", [
        f"DPO model: Llama hidden {setup.hidden}, {setup.layers} layers, vocab {setup.vocab}, "
        f"{counts['total'] / 1e6:.0f}M params; fp32 weights, bf16 autocast",
        f"data: {setup.num_pairs} pairs, batch {setup.batch_size}, {setup.steps} steps, max_len {setup.max_len}",
    ])
    payload: dict[str, Any] = {"dpo_params": counts}
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for part, run in (("dpo", lambda: dpo_vs_trl(setup, Path(tmp))),
                          ("lora", lambda: lora_vs_full(setup, Path(tmp))),
                          ("engines", lambda: engines(args.quick, Path(tmp)))):
            if part in parts:
                print(f"\n--- {part}", flush=True)
                try:
                    payload[part] = run()
                except Exception as err:  # one part failing must not lose the others' figures
                    import traceback

                    traceback.print_exc()
                    payload[part] = {"error": f"{type(err).__name__}: {err}"}
    write_result(f"{NAME}-large" if args.large else NAME, args, payload, started)


if __name__ == "__main__":
    main()
