"""DPO (and SFT) training for the self-rewarding loop: log-probs, losses, data, trainers.

Imports only torch, accelerate, ema_pytorch, numpy, safetensors and tqdm.
"""

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
from .logprobs import response_logprobs, selective_log_softmax, sequence_logprobs, token_logprobs
from .loss import LOSSES, PreferenceLossOutput, preference_loss
from .model import DPO
from .optim import build_adamw, build_scheduler, warmup_linear_decay
from .sft import SFT_SEQ_FILE, SFTDataError, SFTDataset, SFTTrainer, sft_loss, write_sft_memmaps
from .shared_prompt import shared_prompt_logprobs, supports_shared_prompt
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
    "DPODataset",
    "DPOTrainer",
    "EarlyStopDecision",
    "EarlyStopper",
    "Evaluator",
    "LossType",
    "NonFiniteLossError",
    "PreferenceDataError",
    "PreferenceLossOutput",
    "Reduction",
    "RoundState",
    "SFTDataError",
    "SFTDataset",
    "SFTTrainer",
    "StepOutput",
    "WeightSnapshot",
    "build_adamw",
    "build_scheduler",
    "load_checkpoint",
    "load_train_state",
    "preference_loss",
    "restore_rng",
    "save_train_state",
    "save_checkpoint",
    "response_logprobs",
    "selective_log_softmax",
    "sequence_logprobs",
    "sft_loss",
    "shared_prompt_logprobs",
    "supports_shared_prompt",
    "token_logprobs",
    "warmup_linear_decay",
    "write_preference_memmaps",
    "write_sft_memmaps",
]
