"""The embedded demo's synthetic task: write a short letter sequence that meets five explicit rules.

An instruction reads::

    Write 6 letters from a to h. Start with b, end with d, include e, no letter twice in a row.

and a correct response is letters separated by spaces, e.g. ``b a e c a d``. Five rules, one point
each (mirroring the paper's additive 5-point judge): ``length`` (exactly n letters, all from the
alphabet), ``start``, ``end``, ``include`` and ``norepeat`` (no letter twice in a row). Everything is
generated from `random.Random(seed)`, so the demo needs no download, and `check` scores any
(instruction, response) pair from the text alone.

Why judging is easier than answering (so a tiny model's self-judgments carry signal before its
answers are good):

- Judging is *verification*: each rule is a local test on a string that is already written
  (compare the first letter, compare the last letter, look for one letter, compare neighbours,
  count at most 8 items). The judgment is a worked check, one short clause per rule, e.g.
  ``length yes, start b b yes, end d c no, include e yes, norepeat - yes. Score: 4``: it quotes the
  wanted letter and the response's letter (or the first doubled letter), so every token is either
  a copy (the easiest thing a transformer learns, and directly supervised) or a comparison of
  nearby tokens, and ``Score: n`` only counts the ``yes`` tokens just written.
- Answering is *search*: the rules interact and must hold at once, left to right, with no going
  back. The model must reserve a slot for the included letter, avoid repeating the previous letter,
  place the end letter exactly at position n (not earlier, and not right after an equal letter)
  and stop there. The valid answers are many and spread out (the seed answers are uniform over
  all of them), so a model that has not sharpened its distribution slips on some rule in a
  sizeable share of its samples.

So the judge is right about rules that the policy often gets wrong; ranking the policy's own
samples by its own judgment favours the samples that got more rules right, and DPO on those pairs
moves the policy towards them. The ground-truth `check` is for evaluation only: training rewards
come only from the model's judgments (the seed-data writer computes ideal judgments with
`rules.rule_results`, not `check`).

Modules: `rules` (TaskSpec, instruction text, `check`), `responses` (good and corrupted answers,
sampled uniformly by dynamic programming), `judge` (template and ideal judgment), `data`
(`write_seed_data`), `metrics` (`evaluate_responses`, `pairwise_judge_accuracy`).

Tokenization: letters are separated by spaces, so a whitespace-aware BPE keeps one token per letter
and a few hundred vocabulary entries cover the whole corpus.
"""

from pipeline.demo_task.data import DemoDataError, write_seed_data
from pipeline.demo_task.judge import (
    DEMO_JUDGE_TEMPLATE,
    judgment_text,
    render_judge_prompt,
    write_judge_template_yaml,
)
from pipeline.demo_task.metrics import evaluate_responses, pairwise_judge_accuracy
from pipeline.demo_task.responses import CorruptionError, corrupt_response, good_response
from pipeline.demo_task.rules import (
    ALPHABET,
    MAX_LENGTH,
    MAX_POINTS,
    MIN_LENGTH,
    RULES,
    CheckResult,
    InstructionParseError,
    TaskSpec,
    TaskSpecError,
    all_tasks,
    check,
    make_task,
    parse_instruction,
    parse_response,
)

__all__ = [
    "ALPHABET",
    "DEMO_JUDGE_TEMPLATE",
    "MAX_LENGTH",
    "MAX_POINTS",
    "MIN_LENGTH",
    "RULES",
    "CheckResult",
    "CorruptionError",
    "DemoDataError",
    "InstructionParseError",
    "TaskSpec",
    "TaskSpecError",
    "all_tasks",
    "check",
    "corrupt_response",
    "evaluate_responses",
    "good_response",
    "judgment_text",
    "make_task",
    "pairwise_judge_accuracy",
    "parse_instruction",
    "parse_response",
    "render_judge_prompt",
    "write_judge_template_yaml",
    "write_seed_data",
]
