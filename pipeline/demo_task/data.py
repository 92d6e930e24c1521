"""The demo's seed data: IFT, EFT, seed prompts, held-out eval prompts and a tokenizer corpus."""

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

from pipeline.demo_task.data_io import atomic_write_text
from pipeline.demo_task.judge import judgment_text, render_judge_prompt
from pipeline.demo_task.responses import corrupt_response, good_response
from pipeline.demo_task.rules import MAX_POINTS, TaskSpec, all_tasks


class DemoDataError(ValueError):
    """Requested demo data sizes do not fit the task's pool of distinct instructions."""


def _ift_records(train_specs: list[TaskSpec], count: int, rng: random.Random) -> list[dict[str, str]]:
    # Walk the shuffled pool so instructions repeat only once all of them have been used.
    specs = (train_specs[i % len(train_specs)] for i in range(count))
    return [{"prompt": spec.instruction(), "response": good_response(spec, rng)} for spec in specs]


def _eft_records(train_specs: list[TaskSpec], count: int, rng: random.Random) -> list[dict[str, str]]:
    records = []
    for i in range(count):
        spec = rng.choice(train_specs)
        response = corrupt_response(spec, rng, i % (MAX_POINTS + 1))  # balanced over scores 5..0
        prompt = render_judge_prompt(spec.instruction(), response)
        records.append({"prompt": prompt, "response": judgment_text(spec, response)})
    rng.shuffle(records)
    return records


def _jsonl(records: Iterable[dict[str, str]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_seed_data(
    out_dir: str | os.PathLike,
    seed: int = 0,
    num_ift: int = 600,
    num_eft: int = 600,
    num_seed_prompts: int = 200,
    num_eval: int = 100,
) -> dict[str, Path]:
    """Writes the demo's seed data, deterministic in `seed`.

    Instructions are split three ways with no overlap: `eval.jsonl` (held out), `seed_prompts.jsonl`
    (the prompt pool of the self-rewarding iterations) and the IFT/EFT instructions (reused with
    fresh responses when more examples are asked for than instructions remain). EFT responses break
    0..5 rules in equal shares, so every judge score is equally represented.

    Returns:
        Paths by name: ift, eft, seed_prompts, eval, tokenizer_corpus.

    Raises:
        DemoDataError: a size is negative, or eval + seed prompts leave no training instructions.
    """
    pool = all_tasks()
    if min(num_ift, num_eft, num_seed_prompts, num_eval) < 0 or num_eval + num_seed_prompts >= len(pool):
        raise DemoDataError(
            f"need sizes >= 0 and num_eval + num_seed_prompts < {len(pool)} (distinct instructions), "
            f"got num_eval={num_eval}, num_seed_prompts={num_seed_prompts}, num_ift={num_ift}, num_eft={num_eft}"
        )
    rng = random.Random(seed)
    rng.shuffle(pool)
    eval_specs, seed_specs = pool[:num_eval], pool[num_eval : num_eval + num_seed_prompts]
    train_specs = pool[num_eval + num_seed_prompts :]

    ift = _ift_records(train_specs, num_ift, rng)
    eft = _eft_records(train_specs, num_eft, rng)

    out = Path(out_dir)
    texts = {
        "ift": _jsonl(ift),
        "eft": _jsonl(eft),
        "seed_prompts": _jsonl({"prompt": s.instruction()} for s in seed_specs),
        "eval": _jsonl({"prompt": s.instruction()} for s in eval_specs),
    }
    corpus = [r[key] for r in ift + eft for key in ("prompt", "response")] + [
        s.instruction() for s in seed_specs
    ]
    paths = {name: out / f"{name}.jsonl" for name in texts}
    paths["tokenizer_corpus"] = out / "tokenizer_corpus.txt"
    texts["tokenizer_corpus"] = "\n".join(corpus) + "\n"
    for name, text in texts.items():
        atomic_write_text(paths[name], text)
    return paths
