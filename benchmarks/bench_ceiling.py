"""This machine's fp32 matmul ceiling (torch) and the FLOP/s our DPO training achieves against it.

Ceiling: square fp32 matmuls (n x n @ n x n, 2 n^3 FLOPs) of a few sizes plus the DPO model's own
matmul shapes (tokens x hidden @ hidden x intermediate, tokens x hidden @ hidden x vocab), each the
best of several timed repeats (best-of: the least disturbed by the other jobs on the shared cores).

DPO: our `dpo.DPOTrainer` on the `bench_dpo` setup (same model, pairs, settings and epochs), in
both reference modes. Model FLOPs per computed token: 6 N for the policy's forward + backward and
2 N for the reference forward, N = parameters that do matmul work per token = all parameters except
the input embedding table (a lookup); the untied LM head is included. Computed tokens are the
non-pad tokens of the rows the trainer runs: one row per pair holding the prompt once
(`dpo.shared_prompt`), T = sum of prompt + chosen + rejected lengths per epoch. With E epochs:
precompute = 6 N E T + 2 N T (one reference pass), no-precompute = 8 N E T (a reference forward
inside every step). Not counted: attention score FLOPs (QK^T, AV; about 4 x T x hidden per layer and
token, a few percent at these lengths), padding positions (the batch is padded to its longest row),
norms, activations, the optimizer. Counted although skipped: the LM head at prompt positions
(about 3% of the total here). So the figure is "useful model FLOP/s", close to a lower bound on what
the hardware executed.

Thread probe: the demo model's training step (hidden 64, 2 layers, 32 x 64 tokens, AdamW) with 1 and
2 torch threads, under OMP_WAIT_POLICY=ACTIVE (libgomp's spin-wait default) and PASSIVE, each policy
in its own child process (the policy is read when torch loads OpenMP). On 2 cores shared with other
jobs the active policy can make 2 threads several times slower than 1.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import bench_dpo
import dpo_setup
from common import (
    alternating,
    format_table,
    load_average,
    median,
    now,
    parse_args,
    print_header,
    setup_torch,
    write_result,
)

NAME = "ceiling"


def matmul_flops(m: int, k: int, n: int, repeats: int, min_seconds: float) -> dict[str, Any]:
    """Best FLOP/s of `(m, k) @ (k, n)` over `repeats` timed batches of calls (each >= min_seconds)."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)  # warm-up (allocation, kernel selection)
    calls = 1
    while True:  # calibrate the calls per timed batch
        start = now()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        elapsed = now() - start
        if elapsed >= min_seconds:
            break
        calls = max(calls * 2, int(calls * min_seconds / max(elapsed, 1e-6)))
    best = elapsed / calls
    for _ in range(repeats - 1):
        start = now()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        best = min(best, (now() - start) / calls)
    return {"shape": f"{m}x{k} @ {k}x{n}", "flops": 2 * m * k * n, "best_s": best, "gflops": 2 * m * k * n / best / 1e9}


def dpo_achieved(setup: dpo_setup.Setup, repeats: int) -> list[dict[str, Any]]:
    """Useful model FLOP/s of our DPOTrainer, both reference modes, alternated."""
    pairs = dpo_setup.make_pairs(setup)
    tokens = dpo_setup.trained_tokens(pairs) * setup.epochs  # what run_ours reports throughput on
    epoch_computed = dpo_setup.shared_prompt_tokens(pairs)
    computed = epoch_computed * setup.epochs
    n = dpo_setup.param_counts(dpo_setup.build_model(setup))["non_embedding"]
    modes = {"ours-precompute": True, "ours-no-precomp": False}
    flops = {"ours-precompute": 6 * n * computed + 2 * n * epoch_computed, "ours-no-precomp": 8 * n * computed}
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        pairs_dir = dpo_setup.write_pairs(pairs, Path(tmp) / "pairs")
        bench_dpo.run_ours(replace(setup, steps_per_epoch=1, epochs=1), pairs_dir, tokens, True, name="warmup")
        for _, mode in alternating(list(modes), repeats):
            result = bench_dpo.run_ours(setup, pairs_dir, tokens, modes[mode])
            seconds[mode].append(result.train_s)
            print(f"  {mode:16s} train {result.train_s:6.2f} s  load {load_average()[:1]}", flush=True)
    return [{"mode": m, "train_s_median": median(s), "train_s_best": min(s), "model_flops": flops[m],
             "computed_tokens": computed, "non_embedding_params": n,
             "gflops_median": flops[m] / median(s) / 1e9, "gflops_best": flops[m] / min(s) / 1e9}
            for m, s in seconds.items()]


def _probe_child(steps: int, repeats: int) -> None:
    """Child process: ms per training step of the demo-size model with 1 and 2 threads (alternated)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 384, (32, 64))
    times: dict[int, list[float]] = {1: [], 2: []}
    for _, threads in alternating([1, 2], repeats + 1):
        torch.set_num_threads(threads)
        start = now()
        for _ in range(steps):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        times[threads].append((now() - start) / steps * 1e3)
    print(json.dumps({str(t): median(v[1:]) for t, v in times.items()}))  # first round = warm-up


def thread_probe(quick: bool) -> list[dict[str, Any]]:
    """Step time of the demo model, 1 vs 2 threads, under each OpenMP wait policy (child processes)."""
    rows = []
    for policy in ("ACTIVE", "PASSIVE"):
        command = [sys.executable, __file__, "--probe", "2" if quick else "3", "2" if quick else "4"]
        out = subprocess.run(command, env={**os.environ, "OMP_WAIT_POLICY": policy}, capture_output=True, text=True,
                             check=True, timeout=300)
        ms = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"omp_wait_policy": policy, "ms_1_thread": ms["1"], "ms_2_threads": ms["2"],
                     "two_thread_speedup": ms["1"] / ms["2"], "load": load_average()[:1]})
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument("--probe", nargs=2, type=int,
                                                                          help=argparse.SUPPRESS))
    if args.probe:
        _probe_child(*args.probe)
        return
    started = now()
    setup_torch(args.threads)
    setup = dpo_setup.QUICK if args.quick else dpo_setup.FULL
    repeats, min_seconds = (3, 0.05) if args.quick else (5, 0.2)
    print_header("Compute ceiling: fp32 matmul vs DPO training", [
        f"torch threads {args.threads}; matmul best of {repeats}; DPO setup = bench_dpo "
        f"{'QUICK' if args.quick else 'FULL'} (hidden {setup.hidden}, {setup.layers} layers, vocab {setup.vocab})",
        "DPO FLOPs = 6N per computed token + 2N per reference-scored token (prompt once per pair), "
        "N = non-embedding params "
        "(see module docstring for what is left out)",
    ])
    rows_tokens = 2 * setup.batch_size * (setup.prompt_len[1] + setup.response_len[1]) // 2  # a typical batch
    shapes = [(n, n, n) for n in ((256, 512, 1024) if args.quick else (256, 512, 1024, 2048))]
    shapes += [(rows_tokens, setup.hidden, setup.intermediate), (rows_tokens, setup.hidden, setup.vocab)]
    matmuls = [matmul_flops(m, k, n, repeats, min_seconds) for m, k, n in shapes]
    ceiling = max(r["gflops"] for r in matmuls)
    print(format_table(["matmul (fp32)", "GFLOP/s (best)", "of ceiling"],
                       [[r["shape"], r["gflops"], f"{r['gflops'] / ceiling:.0%}"] for r in matmuls]))
    dpo_rows = dpo_achieved(setup, 1 if args.quick else 2)
    for row in dpo_rows:
        row["fraction_of_ceiling_median"] = row["gflops_median"] / ceiling
        row["fraction_of_ceiling_best"] = row["gflops_best"] / ceiling
    print(format_table(
        ["DPO mode", "train s (median)", "useful GFLOP/s (median)", "of ceiling", "GFLOP/s (best run)", "of ceiling"],
        [[r["mode"], r["train_s_median"], r["gflops_median"], f"{r['fraction_of_ceiling_median']:.1%}",
          r["gflops_best"], f"{r['fraction_of_ceiling_best']:.1%}"] for r in dpo_rows],
    ))
    print(f"ceiling = best matmul = {ceiling:.1f} GFLOP/s")
    probe = [] if args.quick else thread_probe(args.quick)  # two child processes: too slow for --quick
    print(format_table(["OMP_WAIT_POLICY", "ms/step 1 thread", "ms/step 2 threads", "2-thread speedup", "load"],
                       [[r["omp_wait_policy"], r["ms_1_thread"], r["ms_2_threads"], f"{r['two_thread_speedup']:.2f}x",
                         r["load"]] for r in probe]))
    write_result(NAME, args, {
        "ceiling_gflops": ceiling,
        "matmuls": matmuls,
        "dpo_setup": asdict(setup),
        "dpo": dpo_rows,
        "thread_probe": probe,
        "flops_rule": "6N per computed non-pad token (policy fwd+bwd) + 2N per reference-scored token, "
                      "prompt once per pair, N = non-embedding params",
    }, started)


if __name__ == "__main__":
    main()
