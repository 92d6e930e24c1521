"""Loading local Hugging Face causal LMs (and their tokenizers) for training and for generation.

Models come from local `from_pretrained` directories only (`pipeline.tiny_model` builds one for the
demo and the tests), weights from safetensors only. `InferenceModel` holds a model that steps only
read, loaded once and released before training needs the memory.
"""

import json
import os
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from generation import VllmEngine
from pipeline.config import EngineConfig


class ModelLoadError(ValueError):
    """A model or tokenizer directory is missing, incomplete or unusable for generation."""


class DeviceError(ValueError):
    """An unknown or unavailable device / dtype was requested."""


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Weights are loaded from safetensors only: pickle-based `.bin` checkpoints can run code when loaded.
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
_PICKLE_PATTERNS = ("pytorch_model*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.ckpt")
_MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own limit on the JSON header


def select_device(pref: str = "auto") -> torch.device:
    """Resolve a device preference.

    Args:
        pref: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".

    Returns:
        The torch device.
    """
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(pref)
    except RuntimeError as err:
        raise DeviceError(f"device={pref!r} is not a device name; expected 'auto', 'cpu' or 'cuda'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={pref!r} was requested but CUDA is not available on this machine")
    return device


def select_dtype(pref: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """Resolve a dtype preference.

    Args:
        pref: "auto" (bfloat16 on a CUDA device that supports it, else float32), "float32",
            "bfloat16", "float16" or a torch dtype.
        device: The device the model will run on.

    Returns:
        The torch dtype.
    """
    if isinstance(pref, torch.dtype):
        return pref
    if pref == "auto":
        on_cuda = torch.device(device).type == "cuda"
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    if pref not in DTYPES:
        raise DeviceError(f"dtype={pref!r} is unknown; expected 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[pref]


def set_torch_threads(threads: int | None) -> None:
    """Size this process's torch CPU thread pool (`runtime.torch_threads`); None keeps torch's choice."""
    if threads is not None:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_model_dir(path: Path) -> None:
    """Fail fast, without any network call, when `path` is not a usable local model directory."""
    if path.is_file():
        raise ModelLoadError(f"'{path}' is a file; give the model directory (the folder holding config.json, "
                             "the *.safetensors weights and the tokenizer)")
    if not path.is_dir():
        raise ModelLoadError(
            f"model directory '{path}' does not exist. Models are loaded only from local directories "
            "(never downloaded here); download it first, e.g. "
            f"`huggingface-cli download <repo-id> --local-dir {path}`, and pass that directory."
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"'{path}' is not a Hugging Face model directory: config.json is missing")
    if not any(any(path.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        if any(any(path.glob(pattern)) for pattern in _PICKLE_PATTERNS):
            raise ModelLoadError(
                f"model directory '{path}' has only pickle-based weights (.bin/.pt); they are never loaded "
                "because unpickling can run code. Convert them to safetensors (e.g. load once in a trusted "
                "session and `save_pretrained(..., safe_serialization=True)`)"
            )
        raise ModelLoadError(
            f"model directory '{path}' has no weights (expected *.safetensors); "
            "the download or save may be incomplete"
        )
    for weights in _weight_files(path):
        _check_safetensors(weights)


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files a `from_pretrained` of `path` reads (every shard of a sharded checkpoint)."""
    index = path / "model.safetensors.index.json"
    if index.is_file() and not (path / "model.safetensors").is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelLoadError(f"'{index}' is not a readable safetensors index ({err})") from None
        return [path / name for name in shards]
    return sorted(path.glob("*.safetensors"))


def _check_safetensors(path: Path) -> None:
    """The header of a safetensors file parses and the file is exactly as long as it says (a
    truncated download otherwise passes every check and fails minutes later, once Prefect runs)."""
    problem = None
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8)) if size >= 8 else (0,)
            if size < 8 or header_len > min(size - 8, _MAX_SAFETENSORS_HEADER):
                problem = f"header of {header_len} bytes does not fit in the file's {size} bytes"
            else:
                header = json.loads(f.read(header_len))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
                if size != 8 + header_len + end:
                    problem = f"the header describes {8 + header_len + end} bytes but the file has {size}"
    except FileNotFoundError:
        problem = "file not found"
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error) as err:
        problem = f"unreadable header ({err})"
    if problem:
        raise ModelLoadError(f"weights file '{path}' is truncated or corrupt: {problem}; download or save it again")


def check_model_dir(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Check a model directory without loading its weights: config, complete safetensors weights and
    a tokenizer with an EOS token (seconds faster than `load_model_and_tokenizer`).

    Returns:
        The directory's tokenizer (as `load_tokenizer` returns it).

    Raises:
        ModelLoadError: naming the directory and what is missing.
    """
    _check_model_dir(Path(path))
    return load_tokenizer(path)


def context_size(path: str | os.PathLike) -> int | None:
    """The context length (`max_position_embeddings`) a model directory's config.json states, if any."""
    try:
        value = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory, with an EOS token, a pad token and left padding.

    Raises:
        ModelLoadError: it cannot be loaded or has no EOS token.
    """
    path = Path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # a malformed tokenizer.json raises KeyError, or a bare Exception from Rust
        raise ModelLoadError(f"could not load a tokenizer from '{path}': {type(err).__name__}: "
                             f"{str(err)[:300]}") from err
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(
            f"the tokenizer in '{path}' has no EOS token; generation could never stop. "
            "Set eos_token in its tokenizer_config.json"
        )
    if tokenizer.pad_token_id is None:
        # Padding is always masked out, so reusing EOS as the pad token is safe for generation.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model_and_tokenizer(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
) -> tuple[Any, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local `from_pretrained` directory.

    Args:
        path: Local directory (Llama, Qwen, Mistral, ... or one written by `build_tiny_model`).
        device: "auto", "cpu", "cuda" or a torch device.
        dtype: "auto", "float32", "bfloat16", "float16" or a torch dtype.

    Returns:
        (model in eval mode on `device`, tokenizer with pad token set and left padding).
    """
    model_dir = Path(path)
    _check_model_dir(model_dir)
    torch_device = select_device(device) if isinstance(device, str) else torch.device(device)
    torch_dtype = select_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), local_files_only=True, dtype=torch_dtype, use_safetensors=True
        )
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"could not load a causal LM from '{model_dir}': {err}") from err
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ModelLoadError(
            f"tokenizer in '{model_dir}' has {len(tokenizer)} tokens but the model embeds only {vocab}"
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch_device)
    model.eval()
    return model, tokenizer


def load_vllm_engine(
    path: str | os.PathLike, engine: EngineConfig, dtype: str = "auto", threads: int | None = None
) -> tuple[VllmEngine, PreTrainedTokenizerBase]:
    """A `VllmEngine` on a local model directory (its worker starts on first use) and our tokenizer.

    Args:
        path: Local model directory (checked as `load_model_and_tokenizer` checks it).
        engine: The `engine` config section (interpreter, dtype, parallelism, memory).
        dtype: `model.dtype`, used when `engine.dtype` is "auto".
        threads: CPU threads of the worker (`runtime.torch_threads`; None: cores - 1).
    """
    model_dir = Path(path)
    _check_model_dir(model_dir)
    tokenizer = load_tokenizer(model_dir)
    model = VllmEngine(model_dir, python=engine.python, dtype=dtype if engine.dtype == "auto" else engine.dtype,
                       tensor_parallel_size=engine.tensor_parallel_size,
                       gpu_memory_utilization=engine.gpu_memory_utilization,
                       cpu_kv_cache_gib=engine.cpu_kv_cache_gib, cpu_threads=threads)
    return model, tokenizer


class InferenceModel:
    """A model that steps only read (sampling, judging, evaluation), loaded on first use and shared.

    The flow makes one per model it generates with and hands it to each of those steps, so M_t is
    loaded once per iteration; `release()` drops it before training needs the memory. With
    `engine.name: vllm` the "model" is a `VllmEngine` (one worker process for all those steps),
    which `generation.generate` hands its calls to; `release()` stops the worker.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", dtype: str = "float32",
                 engine: EngineConfig | None = None, threads: int | None = None) -> None:
        self.path, self.device, self.dtype = Path(path), device, dtype
        self.engine, self.threads = engine or EngineConfig(), threads
        self._loaded: tuple[Any, PreTrainedTokenizerBase] | None = None

    def get(self) -> tuple[Any, PreTrainedTokenizerBase]:
        """(model in eval mode or engine, tokenizer), loading them on the first call."""
        if self._loaded is None:
            self._loaded = _LOADERS[self.engine.name](self)
        return self._loaded

    @property
    def loaded(self) -> bool:
        """True while the model is held in memory."""
        return self._loaded is not None

    def release(self) -> None:
        """Forget the loaded model, stopping an engine's worker (the next `get` loads it again)."""
        if self._loaded is not None and isinstance(self._loaded[0], VllmEngine):
            self._loaded[0].close()
        self._loaded = None


# How `InferenceModel.get` loads, by `engine.name`.
_LOADERS = {
    "native": lambda m: load_model_and_tokenizer(m.path, device=m.device, dtype=m.dtype),
    "vllm": lambda m: load_vllm_engine(m.path, m.engine, dtype=m.dtype, threads=m.threads),
}
