"""Sampling from Hugging Face causal LMs: chat prompts, batched KV-cached decoding (or vLLM in its
own virtualenv, `VllmEngine`; or split by bucket over processes, `DataParallelModel`), self-instruct
prompts, and the prompts and candidates files of the loop's first two steps."""

from generation.candidates import (
    CANDIDATES_FILE,
    CandidatesSummary,
    PromptCandidates,
    distinct_share,
    read_candidates,
    sample_candidates,
)
from generation.chat import encode_chat_prompt, render_chat_prompt
from generation.decoding import (
    Completion,
    GenerationEngine,
    PromptError,
    common_prefix_len,
    generate,
    plan_buckets,
    prompt_budget,
)
from generation.filters import PromptFilter, PromptPool, RejectReason, lcs_length, rouge_l
from generation.jsonl import iter_jsonl, write_jsonl
from generation.next_token import SamplingParams, SamplingParamsError, sample_next_tokens
from generation.parallel import DataParallelModel, Shard, bucket_seed, shard_buckets
from generation.prompt_io import PromptFileError, read_prompts
from generation.prompts import (
    FEWSHOT_INSTRUCTION,
    PROMPTS_FILE,
    GeneratedPrompts,
    build_fewshot_prompt,
    extract_task,
    fewshot_examples,
    read_prompt_file,
    sample_pool,
    self_instruct,
    write_prompt_file,
)
from generation.stats import GenerationStats
from generation.vllm_engine import EngineUnavailableError, VllmEngine, VllmEngineError, check_vllm_python

__all__ = [
    "CANDIDATES_FILE",
    "FEWSHOT_INSTRUCTION",
    "PROMPTS_FILE",
    "CandidatesSummary",
    "Completion",
    "DataParallelModel",
    "EngineUnavailableError",
    "GenerationEngine",
    "GeneratedPrompts",
    "GenerationStats",
    "PromptCandidates",
    "PromptError",
    "PromptFileError",
    "PromptFilter",
    "PromptPool",
    "RejectReason",
    "SamplingParams",
    "SamplingParamsError",
    "Shard",
    "VllmEngine",
    "VllmEngineError",
    "bucket_seed",
    "build_fewshot_prompt",
    "check_vllm_python",
    "common_prefix_len",
    "distinct_share",
    "encode_chat_prompt",
    "extract_task",
    "fewshot_examples",
    "generate",
    "iter_jsonl",
    "lcs_length",
    "plan_buckets",
    "prompt_budget",
    "read_candidates",
    "read_prompt_file",
    "read_prompts",
    "render_chat_prompt",
    "rouge_l",
    "sample_candidates",
    "sample_next_tokens",
    "sample_pool",
    "self_instruct",
    "shard_buckets",
    "write_jsonl",
    "write_prompt_file",
]
