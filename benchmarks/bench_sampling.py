"""Sampling + judging throughput (new tokens/s): our `generation.generate` / `judging.judge_responses`
against plain Hugging Face `model.generate` loops, on the same model, prompts, N, K and settings.

Workload (the demo's shapes, read from `configs/demo.yaml`): the demo's tiny Llama and BPE tokenizer
built from scratch on the demo task (`pipeline.models`, `pipeline.demo_task`), P seed prompts in the
chat format, N candidates per prompt (candidate sampling settings of the demo), then K judgments per
candidate with the demo's judge template and judge sampling settings.

Contenders, alternated A, B, C, A, B, C ... (medians reported):
    ours        `generate(..., num_samples=N)` once for all prompts; `judge_responses(..., K)` once
                (bucketed KV-cached decoding, shared judge-prefix prefill, finished rows dropped)
    hf-loop     one `model.generate(num_return_sequences=N)` call per prompt, then one
                `model.generate(num_return_sequences=K)` call per candidate's judge prompt
    hf-batched  `model.generate` on left-padded batches of prompts (the same sequences-per-batch as
                ours), `num_return_sequences` N / K: the strongest "plain" baseline

Equal work: a random-init model rarely emits EOS, and when it does the contenders would stop at
different places. Every contender therefore ignores EOS and produces exactly `max_new_tokens` new
tokens per sequence: HF gets `eos_token_id=None` (generation config too); ours gets a tokenizer view
whose `eos_token_id` is an id the model cannot emit (the only way: `generate` has no min_new_tokens).
All contenders judge the same candidate texts (sampled once by ours, untimed). Judge prompts are
built with the project's own `encode_chat_prompt(template.render(...))` for every contender.

Timed: the generate / judge calls (including prompt encoding inside `judge_responses`, which the
plain contenders do inside their timed region too); not timed: model and tokenizer build.
"""

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    synchronized_now,
    write_result,
)

NAME = "sampling"


@dataclass(frozen=True)
class Workload:
    num_prompts: int = 16
    num_candidates: int = 4  # N (the demo uses 16; 4 keeps the one-call-per-judgment contender to minutes)
    num_judgments: int = 3  # K (demo: 3)
    repeats: int = 3


FULL = Workload(num_prompts=32)
QUICK = Workload(num_prompts=4, repeats=1)


class _NoEosTokenizer:
    """A view of a tokenizer whose EOS id can never be sampled, so `generate` runs the full budget."""

    def __init__(self, tokenizer: Any, unreachable_id: int) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = unreachable_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def build_demo_model(tmp: Path, config, num_seed_prompts: int = 200) -> tuple[Any, Any, list[str]]:
    """The demo's tokenizer + tiny Llama (random init) and its seed prompts (a pool of `num_seed_prompts`)."""
    import json

    from pipeline import demo_task
    from pipeline.models import load_model_and_tokenizer
    from pipeline.tiny_model import build_tiny_model, build_tokenizer

    tiny = config.model.tiny
    paths = demo_task.write_seed_data(tmp / "data", seed=config.seed, num_seed_prompts=num_seed_prompts)
    corpus = paths["tokenizer_corpus"].read_text(encoding="utf-8").splitlines()
    tokenizer = build_tokenizer(corpus, tmp / "tokenizer", vocab_size=tiny.vocab_size)
    model_dir = build_tiny_model(tokenizer, tmp / "model", hidden_size=tiny.hidden_size, num_layers=tiny.num_layers,
                                 num_heads=tiny.num_heads, intermediate_size=tiny.intermediate_size,
                                 max_position_embeddings=tiny.max_position_embeddings, seed=config.seed)
    model, tokenizer = load_model_and_tokenizer(model_dir, device="cpu", dtype="float32")
    model.generation_config.eos_token_id = None  # ignore EOS everywhere (see the module docstring)
    prompts = [json.loads(line)["prompt"] for line in paths["seed_prompts"].read_text().splitlines() if line]
    return model, tokenizer, prompts


def sampling_params(cfg, batch_size: int | None = None, seed: int = 0):
    from generation import SamplingParams

    return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, batch_size=batch_size or cfg.batch_size, seed=seed)


# ---------------------------------------------------------------- plain HF contenders


def _hf_generate(model, rows: list[list[int]], params, num_return: int, pad_id: int) -> int:
    """One `model.generate` call on left-padded `rows`; returns the number of new tokens."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=params.temperature > 0,
                         temperature=params.temperature or None, top_p=params.top_p, top_k=params.top_k,
                         max_new_tokens=params.max_new_tokens, num_return_sequences=num_return,
                         eos_token_id=None, pad_token_id=pad_id)
    return (out.shape[1] - width) * out.shape[0]


# ---------------------------------------------------------------- ours


def ours_candidates(model, tokenizer, prompt_ids, params, n: int) -> tuple[int, list[list[str]]]:
    from generation import GenerationStats, generate

    stats = GenerationStats()
    out = generate(model, tokenizer, prompt_ids, params, num_samples=n, stats=stats)
    return stats.new_tokens, [[c.text for c in row] for row in out]


def ours_judge(model, tokenizer, prompts, candidates, template, params, k: int) -> int:
    from judging import JudgingStats, judge_responses

    stats = JudgingStats()
    judge_responses(model, tokenizer, prompts, candidates, template=template, num_judgments=k, params=params,
                     stats=stats)
    return stats.new_tokens


# ---------------------------------------------------------------- main


@dataclass
class Run:
    contender: str
    repeat: int
    candidate_s: float
    candidate_tokens: int
    judge_s: float
    judge_tokens: int


def _time(fn: Callable[[], Any], gpu: bool = False) -> tuple[float, Any]:
    start = now()
    value = fn()
    return synchronized_now(gpu) - start, value


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = now()
    setup_torch(args.threads)
    from generation import encode_chat_prompt
    from judging import load_template
    from pipeline.config import load_config

    wl = QUICK if args.quick else FULL
    config = load_config(ROOT / "configs" / "demo.yaml")
    it = config.iteration_config(1)
    template = load_template(it.judge.template)
    cand_params, judge_params = sampling_params(it.candidates.sampling), sampling_params(it.judge.sampling, seed=1)
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as tmp, quiet_stdio():
        model, tokenizer, pool = build_demo_model(Path(tmp), config)
    no_eos = _NoEosTokenizer(tokenizer, model.config.vocab_size + 1000)
    prompts = pool[: wl.num_prompts]
    prompt_ids = [encode_chat_prompt(tokenizer, p) for p in prompts]
    _, candidates = ours_candidates(model, no_eos, prompt_ids, cand_params, wl.num_candidates)  # untimed, shared
    judge_ids = [(lambda p=p, c=c: encode_chat_prompt(tokenizer, template.render(p, c)))
                 for p, row in zip(prompts, candidates) for c in row]
    judge_len = [len(f()) for f in judge_ids]
    n_params = sum(p.numel() for p in model.parameters())
    print_header("Sampling + judging throughput: ours vs plain HF generate", [
        f"model: demo tiny Llama (hidden {config.model.tiny.hidden_size}, {config.model.tiny.num_layers} layers, "
        f"vocab {model.config.vocab_size}, {n_params / 1e6:.2f}M params), random init, fp32, EOS ignored",
        f"{wl.num_prompts} prompts (mean {sum(map(len, prompt_ids)) / len(prompt_ids):.0f} tokens) x N={wl.num_candidates}"
        f" candidates ({cand_params.max_new_tokens} new tokens, T={cand_params.temperature}, top_p={cand_params.top_p})",
        f"judging: {len(judge_ids)} judge prompts (mean {sum(judge_len) / len(judge_len):.0f} tokens, template "
        f"'{template.name}') x K={wl.num_judgments} ({judge_params.max_new_tokens} new tokens, "
        f"T={judge_params.temperature}, top_p={judge_params.top_p})",
        f"batch size (sequences): candidates {cand_params.batch_size}, judge {judge_params.batch_size} (demo config)",
    ])
    contenders: dict[str, Callable[[], tuple[tuple[float, int], tuple[float, int]]]] = {
        "ours": lambda: (
            _time(lambda: ours_candidates(model, no_eos, prompt_ids, cand_params, wl.num_candidates)[0]),
            _time(lambda: ours_judge(model, no_eos, prompts, candidates, template, judge_params, wl.num_judgments)),
        ),
        "hf-loop": lambda: _hf_split(model, tokenizer, prompt_ids, judge_ids, cand_params, judge_params, wl, 1),
        "hf-batched": lambda: _hf_split(model, tokenizer, prompt_ids, judge_ids, cand_params, judge_params, wl,
                                        max(1, cand_params.batch_size // wl.num_candidates)),
    }
    runs: list[Run] = []
    for repeat, name in alternating(list(contenders), wl.repeats):
        (cs, ct), (js, jt) = contenders[name]()
        runs.append(Run(name, repeat, cs, ct, js, jt))
        print(f"  run {repeat} {name:10s} candidates {ct / cs:8.0f} tok/s ({cs:5.2f} s)  judging {jt / js:8.0f} tok/s "
              f"({js:5.2f} s)  load {load_average()[:1]}", flush=True)
    expected = (wl.num_prompts * wl.num_candidates * cand_params.max_new_tokens,
                len(judge_ids) * wl.num_judgments * judge_params.max_new_tokens)
    for run in runs:  # equal work check: everyone produced exactly the full budget
        assert (run.candidate_tokens, run.judge_tokens) == expected, (run, expected)
    rows = _summary(runs)
    print(format_table(
        ["contender", "runs", "candidates tok/s", "judging tok/s", "total tok/s", "ours speedup", "spread"],
        [[r["contender"], r["runs"], r["candidate_tokens_per_s"], r["judge_tokens_per_s"], r["total_tokens_per_s"],
          f"{r['ours_speedup_total']:.2f}x", f"{r['total_spread']:.0%}"] for r in rows],
    ))
    write_result(NAME, args, {
        "workload": asdict(wl),
        "candidate_sampling": cand_params.__dict__ if hasattr(cand_params, "__dict__") else str(cand_params),
        "judge_sampling": judge_params.__dict__ if hasattr(judge_params, "__dict__") else str(judge_params),
        "judge_template": template.name,
        "mean_judge_prompt_tokens": sum(judge_len) / len(judge_len),
        "new_tokens": {"candidates": expected[0], "judging": expected[1]},
        "eos": "ignored by every contender (fixed max_new_tokens per sequence)",
        "summary": rows,
        "runs": [asdict(r) for r in runs],
    }, started)


def _hf_split(model, tokenizer, prompt_ids, judge_ids, cand_params, judge_params, wl, rows_per_call):
    """Times the HF candidate and judging phases separately."""
    import torch

    pad, gpu = tokenizer.pad_token_id, model.device.type == "cuda"
    torch.manual_seed(0)
    with torch.inference_mode():
        cand_s, cand = _time(lambda: sum(
            _hf_generate(model, prompt_ids[i:i + rows_per_call], cand_params, wl.num_candidates, pad)
            for i in range(0, len(prompt_ids), rows_per_call)), gpu)
        per_call = 1 if rows_per_call == 1 else max(1, judge_params.batch_size // wl.num_judgments)

        def judge() -> int:
            rows = [ids() for ids in judge_ids]  # prompt encoding is part of judging for every contender
            return sum(_hf_generate(model, rows[i:i + per_call], judge_params, wl.num_judgments, pad)
                       for i in range(0, len(rows), per_call))

        judge_s, judged = _time(judge, gpu)
    return (cand_s, cand), (judge_s, judged)


def _summary(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(r.contender for r in runs):
        mine = [r for r in runs if r.contender == name]
        total = [(r.candidate_tokens + r.judge_tokens) / (r.candidate_s + r.judge_s) for r in mine]
        rows.append({
            "contender": name,
            "runs": len(mine),
            "candidate_tokens_per_s": median([r.candidate_tokens / r.candidate_s for r in mine]),
            "judge_tokens_per_s": median([r.judge_tokens / r.judge_s for r in mine]),
            "total_tokens_per_s": median(total),
            "total_spread": spread(total),
            "candidate_s_median": median([r.candidate_s for r in mine]),
            "judge_s_median": median([r.judge_s for r in mine]),
        })
    ours = rows[0]["total_tokens_per_s"]
    for row in rows:
        row["ours_speedup_total"] = ours / row["total_tokens_per_s"]
    return rows


if __name__ == "__main__":
    main()
