"""The steps of a run, each a plain function: its inputs' records in, a published step folder and
its record out.

A step's fingerprint covers everything that defines its output (its config section, the records
of its inputs, its seed), so a finished step is read back instead of recomputed and an interrupted
one restarts from a clean folder (`flows/stepdir.py`). Each calls one package function for the
work. Nothing here imports Prefect or MLflow: `flows/tasks.py` makes these functions tasks.
"""

from flows.steps.common import inference_model
from flows.steps.evaluate import eval_step, judge_health_step
from flows.steps.generate import candidates_step, prompts_step
from flows.steps.judge import consistency_step, judge_step, meta_judge_step, pairs_step
from flows.steps.start import base_model_step, data_step, sft_step
from flows.steps.train import dpo_step

__all__ = [
    "base_model_step",
    "candidates_step",
    "consistency_step",
    "data_step",
    "dpo_step",
    "eval_step",
    "inference_model",
    "judge_health_step",
    "judge_step",
    "meta_judge_step",
    "pairs_step",
    "prompts_step",
    "sft_step",
]
