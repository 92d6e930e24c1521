"""Data-parallel judging (`runtime.parallel_generation`): the judge step on 2 `accelerate launch` CPU
processes (gloo) vs 1 process, same workload, same cores; the speed-up and byte-identical judgments.

Workload: the demo's model shape (configs/demo.yaml; random init from `base_model_step`), its judge
template, K=3 and judge sampling (T=0.7, 32 new tokens, 256 sequences per batch). P pool prompts x
the demo's N=16 candidates, sampled once (untimed, by the candidates step) and judged by every run.
Full: P=128 (2,048 candidates, 6,144 judgments), 2 repeats; --quick: P=16, 1 repeat.

Contenders, alternated (medians reported), each writing a fresh run folder:
    1x1  the judge step in this process (M_t already loaded, as in the flow), 1 torch thread
    1x2  the same with 2 torch threads (the same cores as 2x1; speed only, see below)
    2x1  the judge step on 2 launched ranks, 1 torch thread each: each rank imports torch, loads M_t,
         decodes every other bucket, and the results are gathered in order
Timed: the step's wall (2 processes: launch, imports and model load included) and its judging seconds
(the judge step's own `seconds`, from rank 0: decoding plus waiting for the other rank's buckets).
Checked: the judgments files of 1x1 and 2x1 have the same sha256 (the step manifest's `files`), every
run. 1x2 is reported apart: torch's CPU kernels may round differently with another thread count,
which can flip a sampled token, so the output is identical for the same threads per process.
"""

import tempfile
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
    write_result,
)

NAME = "parallel"
# name -> (processes, torch threads per process)
CONTENDERS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}
ITERATION = 1


@dataclass(frozen=True)
class Workload:
    num_prompts: int = 128
    repeats: int = 2


FULL = Workload()
QUICK = Workload(num_prompts=16, repeats=1)


@dataclass
class Run:
    contender: str
    repeat: int
    step_s: float  # the judge step's wall, as the flow sees it
    judging_s: float  # the step's own judging seconds
    new_tokens: int
    files: dict[str, str]  # sha256 of each output file


def config_for(processes: int, num_prompts: int, threads: int):
    """The demo config with pool prompts and data-parallel generation on `processes` processes of
    `threads` torch threads."""
    from pipeline.config import load_config

    return load_config(ROOT / "configs" / "demo.yaml", [
        "iteration.prompts.source=seed", f"iteration.prompts.num_prompts={num_prompts}",
        "runtime.parallel_generation=true", "runtime.launcher=accelerate", f"runtime.num_processes={processes}",
        f"runtime.torch_threads={threads}"])


@dataclass
class Setup:
    """The model and candidates every run judges (built once, untimed)."""

    model: Any  # StepRecord of M_t
    candidates: Any  # StepRecord of the candidates step
    loaded: Any  # M_t in this process (the 1-process contender)


def build_setup(tmp: Path, num_prompts: int) -> Setup:
    from flows import launch, steps
    from pipeline.runlock import run_lock

    config = config_for(1, num_prompts, 1)
    with run_lock(tmp / "shared"), quiet_stdio():
        data = steps.data_step(config, tmp / "shared")
        model = steps.base_model_step(config, tmp / "shared", data)
        loaded = steps.inference_model(config, model)
        loaded.get()  # loaded once, outside every timing (the flow holds M_t through its iteration)
        prompts = launch.data_parallel(steps.prompts_step)(config, ITERATION, tmp / "shared", model, data, loaded)
        candidates = launch.data_parallel(steps.candidates_step)(config, ITERATION, tmp / "shared", model, prompts,
                                                                 loaded)
    return Setup(model, candidates, loaded)


def judge_once(s: Setup, run_dir: Path, contender: str, num_prompts: int) -> Run:
    import torch

    from flows import launch, steps
    from pipeline.runlock import run_lock

    processes, threads = CONTENDERS[contender]
    config = config_for(processes, num_prompts, threads)
    torch.set_num_threads(threads)  # what the flow does with runtime.torch_threads in its own process
    with run_lock(run_dir), quiet_stdio():
        start = now()
        record = launch.data_parallel(steps.judge_step)(config, ITERATION, run_dir, s.model, s.candidates, s.loaded)
        step_s = now() - start
    return Run(contender, 0, step_s, record.summary["seconds"], record.summary["new_tokens"], record.files)


def time_runs(s: Setup, tmp: Path, wl: Workload) -> list[Run]:
    runs = []
    for repeat, contender in alternating(list(CONTENDERS), wl.repeats):
        run = judge_once(s, tmp / f"run-{contender}-{repeat}", contender, wl.num_prompts)
        run.repeat = repeat
        runs.append(run)
        print(f"  run {repeat} {contender} (processes x threads): step {run.step_s:6.2f} s, judging {run.judging_s:6.2f} s "
              f"({run.new_tokens / run.judging_s:6.0f} new tok/s)  load {load_average()[:1]}", flush=True)
    return runs


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Medians per contender, speed-ups of 2x1 over each 1-process contender (of medians and paired per
    repeat), and the output checks."""
    rows = {}
    for name in CONTENDERS:
        mine = [r for r in runs if r.contender == name]
        rows[name] = {"runs": len(mine), "step_s": median([r.step_s for r in mine]),
                        "step_spread": spread([r.step_s for r in mine]),
                        "judging_s": median([r.judging_s for r in mine]),
                        "judging_spread": spread([r.judging_s for r in mine]),
                        "judging_tokens_per_s": median([r.new_tokens / r.judging_s for r in mine])}
    two = [r for r in runs if r.contender == "2x1"]
    speedups = {}
    for one_name in ("1x1", "1x2"):
        pairs = list(zip([r for r in runs if r.contender == one_name], two))
        for what in ("judging", "step"):
            speedups[f"{what}_speedup_vs_{one_name}"] = rows[one_name][f"{what}_s"] / rows["2x1"][f"{what}_s"]
            speedups[f"{what}_paired_speedup_vs_{one_name}_median"] = median(
                [getattr(a, f"{what}_s") / getattr(b, f"{what}_s") for a, b in pairs])
    same_threads = [r for r in runs if r.contender in ("1x1", "2x1")]
    return {
        "contenders": rows,
        **speedups,
        # the output must not depend on the number of processes: 1 and 2 processes wrote the same bytes
        "identical_output": all(r.files == same_threads[0].files for r in same_threads) and bool(runs[0].files),
        "identical_output_1x2": all(r.files == same_threads[0].files for r in runs if r.contender == "1x2"),
        "judgments_sha256": same_threads[0].files,
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = now()
    setup_torch(args.threads)
    wl = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        s = build_setup(Path(tmp), wl.num_prompts)
        config = config_for(1, wl.num_prompts, 1)
        it, tiny, candidates = config.iteration_config(ITERATION), config.model.tiny, s.candidates.summary["sequences"]
        print_header("Data-parallel judging: the judge step on 1 process vs 2 accelerate-launched CPU processes", [
            f"model: demo tiny Llama (hidden {tiny.hidden_size}, {tiny.num_layers} layers), random init, fp32; "
            f"{wl.num_prompts} prompts x N={it.candidates.num} = {candidates} candidates, K={it.judge.num_judgments} "
            f"judgments each ({it.judge.sampling.max_new_tokens} new tokens, T={it.judge.sampling.temperature}, "
            f"batch {it.judge.sampling.batch_size})",
            f"contenders (processes x torch threads): {', '.join(CONTENDERS)}; --threads is not used",
        ])
        runs = time_runs(s, Path(tmp), wl)
    summary = summarize(runs)
    print(format_table(["contender", "runs", "step s", "judging s", "judging new tok/s"],
                       [[n, r["runs"], r["step_s"], r["judging_s"], r["judging_tokens_per_s"]]
                        for n, r in summary["contenders"].items()]))
    for one in ("1x1", "1x2"):
        print(f"2x1 vs {one}: judging {summary[f'judging_speedup_vs_{one}']:.2f}x faster (paired "
              f"{summary[f'judging_paired_speedup_vs_{one}_median']:.2f}x), whole step "
              f"{summary[f'step_speedup_vs_{one}']:.2f}x (paired {summary[f'step_paired_speedup_vs_{one}_median']:.2f}x, "
              "launch and model load included)")
    print(f"identical judgments, 1x1 and 2x1: {summary['identical_output']}; 1x2 too: {summary['identical_output_1x2']}")
    assert summary["identical_output"], "the judgments differ between 1 and 2 processes"
    write_result(NAME, args, {
        "workload": asdict(wl),
        "candidates": candidates,
        "num_judgments": it.judge.num_judgments,
        "judge_sampling": it.judge.sampling.model_dump(),
        "contenders": {name: {"processes": p, "torch_threads": t} for name, (p, t) in CONTENDERS.items()},
        "summary": summary,
        "runs": [{k: v for k, v in asdict(r).items() if k != "files"} for r in runs],
    }, started)


if __name__ == "__main__":
    main()
