"""LoRA DPO vs full DPO: peak memory and training tokens/s on a >= 20M-parameter Llama.

Contenders (alternated full, lora, full+gc, lora+gc, full, ...; medians reported):
    full      `dpo.DPO(policy)`: every weight trains; the reference is a frozen copy of the policy
    lora      `dpo.DPO(dpo.add_lora(policy, LoraSettings(r=16, alpha=32)))`: adapters on every linear
              layer but the LM head train; the reference is the same network with the adapters off
    full+gc   full with gradient checkpointing (`ComputeSettings(gradient_checkpointing=True)`)
    lora+gc   lora with gradient checkpointing

Why four: the saving of LoRA is the reference copy, the base weights' gradients and their AdamW
moments; the activations of the backward pass are the same for both, so how much of the peak LoRA
saves depends on how large the activations are next to the weights (batch, sequence length,
width). Gradient checkpointing shrinks the activations for both, and is how memory-bound training
usually runs (TRL's DPOConfig turns it on by default).

Same for both: a LlamaForCausalLM built from a LlamaConfig (hidden 512, 6 layers, 8 heads, MLP 1376,
vocab 8192, untied head: 27.4M parameters) with a fixed seed, fp32, dropout 0, sigmoid loss on
summed log-probs, beta 0.1, AdamW, the same synthetic pairs (`dpo_setup.make_pairs`), batch of 4
pairs (prompts 16-32, responses 16-64 tokens, as bench_dpo.py), the same number of steps, reference
log-probs precomputed once (the default).

Each run is a fresh child process forked from a parent that has imported everything (torch,
transformers, peft) and warmed up, so no run inherits another's freed heap. In the child the base
model is built first (both contenders need it); then the measured region covers building the DPO
objective (the full contender's reference copy, the LoRA wrap), the trainer (AdamW) and `train()`.
    rss rise   peak resident memory in that region (kernel VmHWM, reset at its start) minus the RSS
               at its start (`common.PeakMemory`): the memory training adds on top of the model.
               Measured twice: with glibc's default malloc (what the process shows; glibc keeps
               freed blocks of up to 32 MiB in its heap once it has seen them freed, so the RSS
               also holds memory no tensor uses: in a probe here a LoRA run ended +326 MiB above
               its start with 12 MiB of new tensors alive), and, in separate runs, with `mallopt(M_MMAP_THRESHOLD,
               128 KiB)`, so every tensor of 128 KiB or more is its own mapping, returned to the OS
               when freed: a peak closer to the memory the tensors really need at once (the CPU
               analogue of CUDA's max_memory_allocated). Tokens/s come from the default runs only
               (a mapping per allocation costs page faults).
    state      bytes held by parameters (policy + reference copy), gradients of the trainable
               parameters and AdamW state, counted from the tensors after training: the part of
               the rise that does not depend on activations or the allocator
    tok/s      non-pad chosen + rejected tokens (prompt counted in both rows) of all steps per
               second of `train()` (reference precompute included), as bench_dpo.py counts them
"""

import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench_memory import in_child
from common import (
    PeakMemory,
    alternating,
    format_table,
    load_average,
    median,
    now,
    parse_args,
    print_header,
    quiet_stdio,
    setup_torch,
    spread,
    write_result,
)
from dpo_setup import Setup, build_model, make_pairs, param_counts, trained_tokens, write_pairs

NAME = "lora"
FULL = Setup(hidden=512, layers=6, heads=8, intermediate=1376, vocab=8192, batch_size=4, steps_per_epoch=4,
             epochs=1, max_len=96, learning_rate=1e-4, repeats=3)
QUICK = replace(FULL, steps_per_epoch=2, repeats=1)  # same >= 20M model, fewer steps
LORA = {"r": 16, "alpha": 32.0, "target_modules": "all-linear"}
CONTENDERS = ("full", "lora", "full+gc", "lora+gc")
ALLOCATORS = ("default", "mmap")
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
PAIRS = (("lora", "full"), ("lora+gc", "full+gc"), ("lora+gc", "full"))  # (numerator, denominator) of the ratios


def _state_bytes(trainer) -> dict[str, int]:
    """Parameter, gradient and AdamW-state bytes of the trainer's DPO module (each storage once)."""
    seen, params = set(), 0
    for p in trainer.dpo.parameters():
        if p.untyped_storage().data_ptr() not in seen:
            seen.add(p.untyped_storage().data_ptr())
            params += p.untyped_storage().nbytes()
    trainable = [p for p in trainer.dpo.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)  # allocated by every backward pass
    optim = sum(v.numel() * v.element_size() for state in trainer.loop.optimizer.state.values()
                for v in state.values() if hasattr(v, "numel"))
    return {"param_bytes": params, "grad_bytes": grads, "optimizer_bytes": optim,
            "state_bytes": params + grads + optim, "trainable_params": sum(p.numel() for p in trainable)}


def make_trainer(policy, setup: Setup, pairs_dir: str | Path, contender: str, log_fn, autocast: str = "none"):
    """The DPO trainer of `contender` ("full" or "lora", "+gc" for gradient checkpointing) on `policy`:
    what the measured region builds (the LoRA wrap, or the full contender's reference copy, and AdamW)."""
    import dpo

    kind, _, extra = contender.partition("+")
    network = dpo.add_lora(policy, dpo.LoraSettings(**LORA), seed=setup.seed) if kind == "lora" else policy
    return dpo.DPOTrainer(
        dpo.DPO(network, beta=setup.beta), train_dataset=dpo.DPODataset(pairs_dir, vocab_size=setup.vocab),
        optim=dpo.OptimSettings(batch_size=setup.batch_size, start_learning_rate=setup.learning_rate,
                                end_learning_rate=0.0, dropout=0.0, num_train_steps=setup.steps),
        compute=dpo.ComputeSettings(gradient_checkpointing=extra == "gc", autocast=autocast), seed=setup.seed,
        log_fn=log_fn,
    )


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One training run of `spec["contender"]` (in a child process)."""

    if spec["allocator"] == "mmap":
        import ctypes

        if ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024) != 1:
            raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed")
    setup = Setup(**spec["setup"])
    setup_torch(spec["threads"])
    policy = build_model(setup)
    stamps, losses = [], []

    def log_fn(metrics: dict[str, float], step: int) -> None:
        stamps.append(now())
        losses.append(float(metrics["loss"]))

    with PeakMemory() as mem, quiet_stdio():
        trainer = make_trainer(policy, setup, spec["pairs_dir"], spec["contender"], log_fn)
        start = now()
        summary = trainer.train()
        end = now()
    assert summary["steps"] == setup.steps, summary
    steps = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    return {
        "contender": spec["contender"], "allocator": spec["allocator"], "repeat": spec["repeat"], "train_s": end - start,
        "tokens_per_s": spec["tokens"] / (end - start), "steady_step_s": median(steps[1:]),
        "rss_start_mib": mem.baseline_mib, "rss_peak_mib": mem.peak_mib, "rss_rise_mib": mem.delta_mib,
        "rss_method": mem.method, "first_loss": losses[0], "final_loss": losses[-1], **_state_bytes(trainer),
    }


def summarize(results: list[dict[str, Any]], allocator: str) -> list[dict[str, Any]]:
    rows = []
    for name in CONTENDERS:
        runs = [r for r in results if r["contender"] == name and r["allocator"] == allocator]
        rows.append({
            "contender": name, "allocator": allocator, "runs": len(runs),
            **{f"{key}_median": median([r[key] for r in runs])
               for key in ("tokens_per_s", "train_s", "steady_step_s", "rss_rise_mib", "rss_peak_mib", "state_bytes",
                           "param_bytes", "grad_bytes", "optimizer_bytes", "final_loss")},
            "tokens_per_s_spread": spread([r["tokens_per_s"] for r in runs]),
            "rss_rise_mib_spread": spread([r["rss_rise_mib"] for r in runs]),
            "trainable_params": runs[0]["trainable_params"],
        })
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = now()
    setup_torch(args.threads)
    import peft  # noqa: F401  (imported once here, inherited by every forked child)

    import dpo  # noqa: F401

    setup = QUICK if args.quick else FULL
    pairs = make_pairs(setup)
    tokens = trained_tokens(pairs) * setup.epochs
    counts = param_counts(build_model(setup))
    print_header("LoRA DPO vs full DPO: peak memory and tokens/s", [
        f"model: Llama hidden {setup.hidden}, {setup.layers} layers, vocab {setup.vocab}, untied head, "
        f"{counts['total'] / 1e6:.1f}M params, fp32; LoRA r={LORA['r']} alpha={LORA['alpha']} on all linear layers",
        f"data: {setup.num_pairs} pairs, batch {setup.batch_size} pairs, {setup.steps} steps ({setup.epochs} epochs), "
        f"{tokens} trained tokens; reference log-probs precomputed (the default)",
        f"{setup.repeats} repeat(s), alternated, each run in a fresh forked child; measured region = building the "
        "DPO objective + trainer + train() (see module docstring)",
    ])
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        pairs_dir = str(write_pairs(pairs, Path(tmp) / "pairs"))
        spec = {"setup": asdict(setup), "pairs_dir": pairs_dir, "tokens": tokens, "threads": args.threads,
                "allocator": "default"}
        in_child(run, {**spec, "setup": asdict(replace(setup, steps_per_epoch=1, epochs=1)), "contender": "lora",
                       "repeat": -1})  # warm-up: lazy initialisation inside torch and peft, file cache
        plan = [(repeat, name, "default") for repeat, name in alternating(CONTENDERS, setup.repeats)]
        plan += [(0, name, "mmap") for name in CONTENDERS]  # memory only: one run each is enough (deterministic)
        for repeat, name, allocator in plan:
            result = in_child(run, {**spec, "contender": name, "repeat": repeat, "allocator": allocator})
            results.append(result)
            print(f"  run {repeat} {name:7s} {allocator:7s} {result['tokens_per_s']:5.0f} tok/s  "
                  f"train {result['train_s']:6.2f} s  RSS +{result['rss_rise_mib']:.0f} MiB  "
                  f"state {result['state_bytes'] / 2**20:.0f} MiB  load {load_average()[:1]}", flush=True)
    rows = summarize(results, "default")
    mmap_rows = summarize(results, "mmap")
    print(format_table(
        ["contender", "runs", "trainable", "tok/s", "spread", "train s", "steady step s", "RSS rise MiB",
         "RSS rise MiB (mmap)", "params MiB", "grads MiB", "AdamW MiB", "state MiB", "final loss"],
        [[r["contender"], r["runs"], r["trainable_params"], r["tokens_per_s_median"], f"{r['tokens_per_s_spread']:.0%}",
          r["train_s_median"], r["steady_step_s_median"], r["rss_rise_mib_median"], m["rss_rise_mib_median"],
          r["param_bytes_median"] / 2**20, r["grad_bytes_median"] / 2**20, r["optimizer_bytes_median"] / 2**20,
          r["state_bytes_median"] / 2**20, r["final_loss_median"]] for r, m in zip(rows, mmap_rows)],
    ))
    by_round = {(r["contender"], r["repeat"]): r for r in results if r["allocator"] == "default"}
    ratios = []
    for top, bottom in PAIRS:
        a, b = (next(r for r in rows if r["contender"] == n) for n in (top, bottom))
        am, bm = (next(r for r in mmap_rows if r["contender"] == n) for n in (top, bottom))
        ratios.append({
            "ratio": f"{top} / {bottom}",
            "rss_rise": a["rss_rise_mib_median"] / b["rss_rise_mib_median"],
            "rss_rise_mmap": am["rss_rise_mib_median"] / bm["rss_rise_mib_median"],
            "state_bytes": a["state_bytes_median"] / b["state_bytes_median"],
            "tokens_per_s": a["tokens_per_s_median"] / b["tokens_per_s_median"],
            # Paired: runs of the same round (cancels slow drift of the load on the shared cores).
            **{f"paired_{key}": median([by_round[top, i][key] / by_round[bottom, i][key] for i in range(setup.repeats)])
               for key in ("rss_rise_mib", "tokens_per_s")},
        })
    print(format_table(
        ["ratio", "RSS rise", "paired", "RSS rise (mmap)", "params+grads+AdamW", "tokens/s", "paired"],
        [[r["ratio"], f"{r['rss_rise']:.2f}x", f"{r['paired_rss_rise_mib']:.2f}x", f"{r['rss_rise_mmap']:.2f}x",
          f"{r['state_bytes']:.2f}x", f"{r['tokens_per_s']:.2f}x", f"{r['paired_tokens_per_s']:.2f}x"] for r in ratios],
    ))
    print("target: LoRA peak memory <= 0.6x full DPO")
    write_result(NAME, args, {
        "setup": asdict(setup), "lora": LORA, "params": counts, "trained_tokens": tokens,
        "summary": rows, "summary_mmap": mmap_rows, "ratios": ratios,
        "target": "LoRA peak memory (RSS rise) <= 0.6x full DPO",
        "runs": results,
        "measured_region": "DPO objective + DPOTrainer construction + train(), after the base model is built",
    }, started)


if __name__ == "__main__":
    main()
