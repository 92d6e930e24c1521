"""Batched KV-cached sampling from Hugging Face causal LMs, chat prompts and self-instruct prompt generation."""

from generation.chat import encode_chat_prompt, render_chat_prompt
from generation.decoding import Completion, PromptError, common_prefix_len, generate, prompt_budget
from generation.filters import PromptFilter, PromptPool, RejectReason, lcs_length, rouge_l
from generation.prompt_io import PromptFileError, read_prompts
from generation.prompts import GeneratedPrompts, build_fewshot_prompt, extract_task, generate_prompts
from generation.sampling import SamplingParams, SamplingParamsError, sample_next_tokens
from generation.stats import GenerationStats

__all__ = [
    "Completion",
    "GeneratedPrompts",
    "GenerationStats",
    "PromptError",
    "PromptFileError",
    "PromptFilter",
    "PromptPool",
    "RejectReason",
    "SamplingParams",
    "SamplingParamsError",
    "build_fewshot_prompt",
    "common_prefix_len",
    "encode_chat_prompt",
    "extract_task",
    "generate",
    "generate_prompts",
    "lcs_length",
    "prompt_budget",
    "read_prompts",
    "render_chat_prompt",
    "rouge_l",
    "sample_next_tokens",
]
