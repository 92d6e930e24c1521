"""Run every benchmark (`make bench`), each in its own process, then print a one-screen summary.

    python benchmarks/run_all.py            # full versions (~20 minutes on 2 shared CPU cores)
    python benchmarks/run_all.py --quick    # smoke versions (~4 minutes)
    python benchmarks/run_all.py --only dpo,ceiling

Each script prints its own tables and writes `benchmarks/results/<name>.json` (`<name>-quick.json`
with --quick); this runner adds `benchmarks/results/run_all[-quick].json` with every script's exit
status and wall time, and exits non-zero when one of them failed.
"""

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from common import RESULTS_DIR, ROOT, format_table, load_average, machine_info, now, write_json_atomic

HERE = Path(__file__).resolve().parent
# Order: the cheap, self-contained ones first; the whole-flow run last.
# bench_gpu.py skips itself without CUDA; its summary rows then show the stored GPU figures, labelled.
BENCHMARKS = ["dpo", "sampling", "ceiling", "memory", "lora", "engines", "parallel", "iteration", "gpu"]


def _summary_lines(name: str, data: dict) -> list[list[str]]:
    """Headline figures of one result file (a row per figure)."""
    if name == "dpo":
        return [[name, r["contender"], f"{r['tokens_per_s_median']:.0f} tok/s ({r['ratio_vs_trl']:.2f}x TRL, paired "
                 f"{r['paired_ratio_vs_trl_median']:.2f}x), "
                 f"peak RSS +{r['rss_delta_mib_median']:.0f} MiB"] for r in data["summary"]]
    if name == "sampling":
        return [[name, r["contender"], f"{r['total_tokens_per_s']:.0f} new tok/s (cand {r['candidate_tokens_per_s']:.0f}, "
                 f"judge {r['judge_tokens_per_s']:.0f}); ours {r['ours_speedup_total']:.2f}x"] for r in data["summary"]]
    if name == "ceiling":
        rows = [[name, "fp32 matmul ceiling", f"{data['ceiling_gflops']:.1f} GFLOP/s"]]
        return rows + [[name, r["mode"], f"{r['gflops_median']:.1f} GFLOP/s = {r['fraction_of_ceiling_median']:.1%} "
                        "of ceiling"] for r in data["dpo"]]
    if name == "memory":
        large = {r["step"]: r for r in data["rows"] if r["prompts"] == max(data["workload"]["sizes"])}
        return [[name, f"{g['step']} step peak memory", f"{g['prompts_ratio']:.0f}x prompts: RSS rise "
                 f"{g['rss_rise_ratio']:.2f}x (+{large[g['step']]['rss_rise_mib']:.1f} MiB), heap peak "
                 f"{g['heap_peak_ratio']:.2f}x ({large[g['step']]['heap_peak_mib']:.1f} MiB)"] for g in data["growth"]]
    if name == "lora":
        return [[name, r["ratio"], f"RSS rise {r['rss_rise']:.2f}x (mmap {r['rss_rise_mmap']:.2f}x; target <= 0.6x), "
                 f"params+grads+AdamW {r['state_bytes']:.2f}x, tokens/s {r['tokens_per_s']:.2f}x"]
                for r in data["ratios"]]
    if name == "engines":
        summary, estimate = data["summary"], data["iteration_estimate"]
        return [[name, "vLLM / native speed", f"candidates {summary['candidates_speed_ratio_vllm_over_native']:.2f}x, "
                 f"judge {summary['judge_speed_ratio_vllm_over_native']:.2f}x (paired "
                 f"{summary['candidates_paired_ratio_median']:.2f}x / {summary['judge_paired_ratio_median']:.2f}x)"],
                [name, "vLLM start", f"{data['vllm']['start_s']:.1f} s per model"],
                [name, "generation per iteration", f"native {estimate['native_s']:.1f} s, vLLM {estimate['vllm_s']:.1f} s "
                 "(two starts)"]]
    if name == "parallel":
        summary, two = data["summary"], data["summary"]["contenders"]["2x1"]
        return [[name, f"judge step, 2 processes vs {one}", f"judging {summary[f'judging_speedup_vs_{one}']:.2f}x "
                 f"faster, whole step {summary[f'step_speedup_vs_{one}']:.2f}x ({two['step_s']:.1f} s with launch); "
                 f"identical output: {summary['identical_output']}"] for one in ("1x1", "1x2")]
    if name == "iteration":
        return [[name, "iteration 1 wall", f"{data['iteration_wall_s']:.1f} s, orchestration + tracking "
                 f"{data['iteration_overhead_share']:.1%}"]] + [
            [name, r["part"], f"{r['seconds']:.2f} s ({r['share']:.1%})"] for r in data["iteration_rows"]]
    if name == "gpu":
        where = f"{data['machine']['gpu']}, {data['timestamp'][:10]}"
        rows = [[name, f"DPO {r['contender']} ({where})", f"{r['tokens_per_s_median']:.0f} tok/s "
                 f"({r['ratio_vs_trl']:.2f}x TRL), peak CUDA +{r['rss_delta_mib_median']:.0f} MiB"]
                for r in data.get("dpo", {}).get("summary", [])]
        rows += [[name, f"LoRA {r['ratio']} ({where})", f"peak CUDA memory {r['peak_rise']:.2f}x, tokens/s "
                  f"{r['tokens_per_s']:.2f}x"] for r in data.get("lora", {}).get("ratios", [])]
        return rows + [[name, f"engine {r['contender']} vs HF generate ({where})",
                        f"candidates {r['candidates_vs_hf']:.2f}x, judging {r['judging_vs_hf']:.2f}x"]
                       for r in data.get("engines", {}).get("summary", [])[:1]]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke versions of every benchmark")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every benchmark")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    started = now()
    statuses = []
    for name in names:
        command = [sys.executable, str(HERE / f"bench_{name}.py"), "--threads", str(args.threads)]
        command += ["--quick"] if args.quick else []
        print(f"\n>>> {' '.join(command[1:])}", flush=True)
        start = now()
        code = subprocess.run(command, cwd=ROOT, check=False).returncode
        statuses.append({"benchmark": name, "exit_code": code, "seconds": round(now() - start, 1)})
    suffix = "-quick" if args.quick else ""
    rows = []
    for name in names:
        path = RESULTS_DIR / f"{name}{suffix}.json"
        if path.is_file():
            rows += _summary_lines(name, json.loads(path.read_text()))
    print("\n=== summary ===")
    print(format_table(["benchmark", "what", "result"], rows))
    print(format_table(["benchmark", "exit", "seconds"], [[s["benchmark"], s["exit_code"], s["seconds"]] for s in statuses]))
    print(f"total {now() - started:.0f} s; load average now {load_average()}")
    write_json_atomic(RESULTS_DIR / f"run_all{suffix}.json", {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "machine": machine_info(),
        "benchmarks": statuses,
        "total_seconds": round(now() - started, 1),
    })
    return 0 if all(s["exit_code"] == 0 for s in statuses) else 1


if __name__ == "__main__":
    raise SystemExit(main())
