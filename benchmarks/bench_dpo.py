"""DPO training throughput: our `dpo.DPOTrainer` against TRL's `DPOTrainer` on the same model and data.

Contenders (alternated A, B, C, A, B, C, ... in one process; medians reported):
    ours-precompute   our default: reference log-probs computed once per round, then policy-only steps
    ours-no-precomp   `precompute_ref_logps=False`: a reference forward in every step
    trl               TRL's DPOTrainer with its defaults where they do not change the maths (reference
                      forward in every step, `precompute_ref_log_probs=False`)

Same for all: a LlamaForCausalLM built from a LlamaConfig with a fixed seed (fresh copy per run),
fp32, no gradient checkpointing, dropout 0, sigmoid loss on summed response log-probs, beta 0.1,
AdamW lr with linear decay to 0, clip 1.0, no weight decay, the same batch size and number of
steps (exactly two epochs, as the demo's DPO `num_epochs: 2`, so every contender trains on exactly
the same token multiset; the precomputed reference is computed once and used in both epochs), and
the reference = a frozen copy of the initial policy. The pairs are synthetic token ids; TRL gets them
as text through a word-level tokenizer ("t17" <-> id 17) and the script checks that TRL's
tokenization gives back the same ids.

Timed: the `train()` call only. Not timed: model build, TRL's dataset tokenization (done in its
constructor), our memmap writing. Inside `train()` ours includes the reference precompute (default
mode) and TRL includes its Trainer setup (optimizer, accelerator prepare, dataloader).
Throughput = non-pad tokens of chosen + rejected rows (prompt included) per second of `train()`,
the same count for every contender: ours computes each prompt once per pair (`dpo.shared_prompt`),
TRL twice, and both are credited with the same pairs.
"steady" = median time of steps 2..S (step 1 carries the one-time costs).
"""

import copy
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from common import (
    CudaPeakMemory,
    PeakMemory,
    alternating,
    format_table,
    load_average,
    median,
    now,
    parse_args,
    peak_memory,
    print_header,
    quiet_stdio,
    setup_torch,
    spread,
    synchronized_now,
    write_result,
)
from dpo_setup import (
    FULL,
    QUICK,
    Pair,
    Setup,
    build_model,
    make_pairs,
    param_counts,
    trained_tokens,
    trl_dataset,
    word_tokenizer,
    write_pairs,
)

NAME = "dpo"
# ---------------------------------------------------------------- runs


@dataclass
class RunResult:
    contender: str
    repeat: int
    train_s: float
    tokens: int
    step_times_s: list[float]
    first_step_s: float
    rss_peak_mib: float
    rss_delta_mib: float
    memory_method: str
    losses: list[float]

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_s

    @property
    def steady_step_s(self) -> float:
        return median(self.step_times_s[1:]) if len(self.step_times_s) > 1 else float("nan")


def _result(name: str, repeat: int, start: float, end: float, stamps: list[float], mem: PeakMemory | CudaPeakMemory,
            tokens: int, losses: list[float]) -> RunResult:
    steps = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    return RunResult(name, repeat, end - start, tokens, steps, stamps[0] - start if stamps else float("nan"),
                     mem.peak_mib, mem.delta_mib, mem.method, losses)


def run_ours(setup: Setup, pairs_dir: Path, tokens: int, precompute: bool, repeat: int = 0,
             name: str | None = None, gpu: bool = False) -> RunResult:
    """One epoch of our DPOTrainer; `train()` timed. `gpu`: bf16 autocast on CUDA (see bench_gpu.py)."""
    import dpo

    policy = build_model(setup, gpu)
    stamps: list[float] = []
    losses: list[float] = []

    def log_fn(metrics: dict[str, float], step: int) -> None:
        stamps.append(now())
        losses.append(float(metrics["loss"]))

    trainer = dpo.DPOTrainer(
        dpo.DPO(policy, beta=setup.beta, loss_type="sigmoid", reduction="sum"),
        train_dataset=dpo.DPODataset(pairs_dir, vocab_size=setup.vocab),
        optim=dpo.OptimSettings(batch_size=setup.batch_size, start_learning_rate=setup.learning_rate,
                                end_learning_rate=0.0, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                                dropout=0.0, num_train_steps=setup.steps),
        precompute_ref_logps=precompute,
        compute=dpo.ComputeSettings(autocast="bf16" if gpu else "none"),
        seed=setup.seed,
        log_fn=log_fn,
    )
    with peak_memory(gpu) as mem, quiet_stdio():
        start = now()
        summary = trainer.train()
        end = synchronized_now(gpu)
    assert summary["steps"] == setup.steps, summary
    name = name or ("ours-precompute" if precompute else "ours-no-precomp")
    return _result(name, repeat, start, end, stamps, mem, tokens, losses)


def _check_trl_tokens(dataset, pairs: list[Pair]) -> None:
    """TRL must train on exactly our ids (same prompt boundary, one EOS, no BOS added)."""
    for row, (p, c, r) in zip(dataset, pairs, strict=True):
        got = (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
        if got != (p, c, r):
            raise AssertionError(f"TRL tokenized a pair differently: {got} != {(p, c, r)}")


def make_trl_trainer(setup: Setup, pairs: list[Pair], out_dir: str, stamps: list[float], logging_steps: int = 0,
                     gpu: bool = False):
    """TRL's DPOTrainer, configured to do the same maths as ours (see the module docstring); `gpu`: bf16
    mixed precision on CUDA, as `run_ours(gpu=True)`."""
    from transformers import TrainerCallback
    from trl import DPOConfig
    from trl import DPOTrainer as TRLDPOTrainer

    class _StepStamps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(now())

    args = DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=setup.batch_size,
        gradient_accumulation_steps=1,
        max_steps=setup.steps,
        learning_rate=setup.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=gpu,  # TRL's default is bf16=True
        fp16=False,
        use_cpu=not gpu,
        gradient_checkpointing=False,  # TRL's default is True
        disable_dropout=True,
        beta=setup.beta,
        loss_type=["sigmoid"],
        max_length=setup.max_len,
        precompute_ref_log_probs=False,
        report_to="none",
        save_strategy="no",
        logging_steps=logging_steps or setup.steps,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=setup.seed,
    )
    policy = build_model(setup, gpu)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    trainer = TRLDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=trl_dataset(pairs),
                            processing_class=word_tokenizer(setup.vocab), callbacks=[_StepStamps()])
    assert trainer.accelerator.mixed_precision == ("bf16" if gpu else "no") and not args.gradient_checkpointing
    _check_trl_tokens(trainer.train_dataset, pairs)
    return trainer


def run_trl(setup: Setup, pairs: list[Pair], tokens: int, repeat: int = 0, logging_steps: int = 0,
            gpu: bool = False) -> RunResult:
    """TRL's DPOTrainer for `setup.steps` steps; `train()` timed (tokenization in the constructor is not)."""
    stamps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out_dir, quiet_stdio():
        trainer = make_trl_trainer(setup, pairs, out_dir, stamps, logging_steps, gpu)
        with peak_memory(gpu) as mem:
            start = now()
            output = trainer.train()
            end = synchronized_now(gpu)
    assert output.global_step == setup.steps, output
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return _result("trl", repeat, start, end, stamps, mem, tokens, losses)


def equivalence_check(folder: Path) -> dict[str, Any]:
    """Do both trainers do the same maths? Two steps on one batch holding every pair (so data order
    cannot differ), a large learning rate: step 1's loss is log 2 for both (policy == reference), step
    2's loss depends on the first update (gradient of the same loss, clipping, AdamW) and must agree.
    TRL rounds logged losses to 4 decimals."""
    setup = replace(QUICK, batch_size=8, steps_per_epoch=1, epochs=2, learning_rate=1e-3)
    pairs = make_pairs(setup)
    tokens = trained_tokens(pairs) * setup.epochs
    ours = run_ours(setup, write_pairs(pairs, folder / "check"), tokens, precompute=True, name="check")
    trl = run_trl(setup, pairs, tokens, logging_steps=1)
    diff = max(abs(a - b) for a, b in zip(ours.losses, trl.losses, strict=True))
    return {"ours_losses": ours.losses, "trl_losses": trl.losses, "max_abs_diff": diff, "agree": diff < 2e-4}


# ---------------------------------------------------------------- optimizer side measurement


def adamw_step_ms(setup: Setup, repeats: int) -> dict[str, float]:
    """Median ms of one AdamW step on the model's parameters: ours (`dpo.build_adamw`) vs torch fused.

    TRL (transformers >= torch 2.8) defaults to `adamw_torch_fused`; `dpo.build_adamw` builds a plain
    `torch.optim.AdamW` (the single-tensor for-loop path on CPU).
    """
    import torch

    import dpo

    model = build_model(setup)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    makers: dict[str, Callable[[], Any]] = {
        "ours (dpo.build_adamw)": lambda: dpo.build_adamw(model, 1e-5, 0.0),
        "torch AdamW(foreach=True)": lambda: torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True),
        "torch AdamW(fused=True) (TRL default)": lambda: torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True),
    }
    optimizers = {name: make() for name, make in makers.items()}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _, name in alternating(list(optimizers), repeats):
        optimizers[name].step()  # warm (state allocation on the first call)
        start = now()
        for _ in range(5):
            optimizers[name].step()
        times[name].append((now() - start) / 5 * 1e3)
    return {name: median(values) for name, values in times.items()}


# ---------------------------------------------------------------- main


def summarize(results: list[RunResult]) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(r.contender for r in results):
        runs = [r for r in results if r.contender == name]
        rows.append({
            "contender": name,
            "runs": len(runs),
            "tokens_per_s_median": median([r.tokens_per_s for r in runs]),
            "tokens_per_s_spread": spread([r.tokens_per_s for r in runs]),
            "train_s_median": median([r.train_s for r in runs]),
            "first_step_s_median": median([r.first_step_s for r in runs]),
            "steady_step_s_median": median([r.steady_step_s for r in runs]),
            "rss_delta_mib_median": median([r.rss_delta_mib for r in runs]),
            "rss_peak_mib_median": median([r.rss_peak_mib for r in runs]),
            "final_loss_median": median([r.final_loss for r in runs]),
        })
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = now()
    setup_torch(args.threads)
    import datasets

    datasets.disable_progress_bars()
    setup = QUICK if args.quick else FULL
    pairs = make_pairs(setup)
    tokens = trained_tokens(pairs) * setup.epochs
    counts = param_counts(build_model(setup))
    print_header("DPO training throughput: ours vs TRL", [
        f"model: Llama hidden {setup.hidden}, {setup.layers} layers, vocab {setup.vocab}, "
        f"{counts['total'] / 1e6:.2f}M params ({counts['non_embedding'] / 1e6:.2f}M non-embedding), fp32",
        f"data: {setup.num_pairs} pairs, batch {setup.batch_size} pairs, {setup.steps} steps ({setup.epochs} "
        f"epochs), max_len {setup.max_len}, {tokens} trained tokens ({tokens // setup.epochs} per epoch)",
        f"{setup.repeats} repeat(s), alternated; timed region = train() (see module docstring)",
    ])
    contenders = ["ours-precompute", "ours-no-precomp", "trl"]
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        pairs_dir = write_pairs(pairs, Path(tmp) / "pairs")
        run_ours(replace(setup, steps_per_epoch=1, epochs=1), pairs_dir, tokens, True, name="warmup")  # lazy imports, kernels
        for repeat, name in alternating(contenders, setup.repeats):
            if name == "trl":
                result = run_trl(setup, pairs, tokens, repeat)
            else:
                result = run_ours(setup, pairs_dir, tokens, name == "ours-precompute", repeat)
            print(f"  run {repeat} {name:16s} {result.tokens_per_s:8.0f} tok/s  train {result.train_s:6.2f} s  "
                  f"rss +{result.rss_delta_mib:.0f} MiB  load {load_average()[:1]}", flush=True)
            results.append(result)
        check = equivalence_check(Path(tmp))
    print(f"equivalence check (2 steps, full batch, lr 1e-3): losses ours {check['ours_losses']} vs TRL "
          f"{check['trl_losses']} -> {'agree' if check['agree'] else 'DIFFER'} (max |diff| {check['max_abs_diff']:.1e})")
    rows = summarize(results)
    trl_tps = next(r["tokens_per_s_median"] for r in rows if r["contender"] == "trl")
    trl_runs = {r.repeat: r.tokens_per_s for r in results if r.contender == "trl"}
    for row in rows:
        row["ratio_vs_trl"] = row["tokens_per_s_median"] / trl_tps
        # Paired: each run against TRL's run of the same A/B/C round (cancels slow drift of the load).
        row["paired_ratio_vs_trl_median"] = median([r.tokens_per_s / trl_runs[r.repeat] for r in results
                                                    if r.contender == row["contender"]])
    print(format_table(
        ["contender", "runs", "tok/s (median)", "spread", "vs TRL", "vs TRL (paired)", "train s", "1st step s",
         "steady step s", "peak RSS +MiB", "final loss"],
        [[r["contender"], r["runs"], r["tokens_per_s_median"], f"{r['tokens_per_s_spread']:.0%}",
          f"{r['ratio_vs_trl']:.2f}x", f"{r['paired_ratio_vs_trl_median']:.2f}x", r["train_s_median"], r["first_step_s_median"], r["steady_step_s_median"],
          r["rss_delta_mib_median"], r["final_loss_median"]] for r in rows],
    ))
    optim = adamw_step_ms(setup, 3 if args.quick else 5)
    print(format_table(["optimizer step (same params)", "ms (median)"], [[k, v] for k, v in optim.items()]))
    write_result(NAME, args, {
        "setup": asdict(setup),
        "params": counts,
        "trained_tokens": tokens,
        "summary": rows,
        "equivalence_check": check,
        "optimizer_step_ms": optim,
        "runs": [{**asdict(r), "tokens_per_s": r.tokens_per_s, "steady_step_s": r.steady_step_s,
                  "final_loss": r.final_loss} for r in results],
        "timed_region": "DPOTrainer.train() (all epochs); model build and TRL tokenization excluded",
    }, started)


if __name__ == "__main__":
    main()
