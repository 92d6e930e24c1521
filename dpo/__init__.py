"""DPO (and SFT) training for the self-rewarding loop: log-probs, losses, data, trainers.

Imports only torch, accelerate, ema_pytorch, numpy, safetensors and tqdm (and peft, inside the
functions of `dpo.lora`, when LoRA is used).
"""

from ._modeling import set_dropout
from ._types import LossType, NonFiniteLossError, Reduction, StepOutput
from .checkpoint import WEIGHTS_FILE, CheckpointError, load_checkpoint, save_checkpoint
from .data import (
    PAD_VALUE,
    PAIRS_FILE,
    PREFERENCE_SEQ_FILE,
    PROMPT_LEN_FILE,
    REWARDS_FILE,
    DPODataset,
    PreferenceDataError,
    write_preference_memmaps,
)
from .early_stopping import EarlyStopDecision, EarlyStopper, WeightSnapshot
from .files import fsync_tree, publish_dir, temp_sibling, write_json_atomic, write_text_atomic
from .logprobs import response_logprobs, selective_log_softmax, sequence_logprobs, token_logprobs
from .lora import adapters_disabled, add_lora, fold_adapters, merge_lora, save_adapter
from .loss import LOSSES, PreferenceLossOutput, preference_loss
from .model import DPO
from .optim import build_adamw, build_scheduler, warmup_linear_decay
from .settings import ComputeSettings, EarlyStopping, LoraSettings, LossSettings, OptimSettings
from .sft import SFT_SEQ_FILE, SFTDataError, SFTDataset, SFTTrainer, sft_loss, write_sft_memmaps
from .shared_prompt import shared_prompt_logprobs, supports_shared_prompt
from .train import split_validation, train_dpo, train_sft
from .train_state import RoundState, load_train_state, restore_rng, save_train_state
from .trainer import DPOTrainer, Evaluator

__all__ = [
    "DPO",
    "LOSSES",
    "PAD_VALUE",
    "PAIRS_FILE",
    "PREFERENCE_SEQ_FILE",
    "PROMPT_LEN_FILE",
    "REWARDS_FILE",
    "SFT_SEQ_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "ComputeSettings",
    "DPODataset",
    "DPOTrainer",
    "EarlyStopDecision",
    "EarlyStopper",
    "EarlyStopping",
    "Evaluator",
    "LoraSettings",
    "LossSettings",
    "LossType",
    "NonFiniteLossError",
    "OptimSettings",
    "PreferenceDataError",
    "PreferenceLossOutput",
    "Reduction",
    "RoundState",
    "SFTDataError",
    "SFTDataset",
    "SFTTrainer",
    "StepOutput",
    "WeightSnapshot",
    "adapters_disabled",
    "add_lora",
    "build_adamw",
    "build_scheduler",
    "fold_adapters",
    "fsync_tree",
    "load_checkpoint",
    "load_train_state",
    "merge_lora",
    "preference_loss",
    "publish_dir",
    "response_logprobs",
    "restore_rng",
    "save_adapter",
    "save_checkpoint",
    "save_train_state",
    "selective_log_softmax",
    "set_dropout",
    "sequence_logprobs",
    "sft_loss",
    "shared_prompt_logprobs",
    "split_validation",
    "supports_shared_prompt",
    "temp_sibling",
    "token_logprobs",
    "train_dpo",
    "train_sft",
    "warmup_linear_decay",
    "write_json_atomic",
    "write_preference_memmaps",
    "write_sft_memmaps",
    "write_text_atomic",
]
