"""The vLLM generation worker: a long-lived process run by the vLLM virtualenv's python.

    .venv-vllm/bin/python -I generation/vllm_worker.py --model DIR [--dtype float32] [...]
    .venv-vllm/bin/python -I generation/vllm_worker.py --check     # can this interpreter run vLLM?

It imports nothing from this project: it runs under another interpreter, with the transformers that
vLLM pins (constraints-vllm.txt), not ours. `generation.vllm_engine.VllmEngine` starts it once and
sends it many requests; texts are decoded by the caller with the project's tokenizer.

Protocol, JSON lines (stdout carries nothing else: the worker moves the library's own output to
stderr, which the caller points at a log file). First line, once the engine is up:

    {"event": "ready", "vllm": "0.32.0", "device": "cpu", "dtype": "float32", "max_model_len": 256,
     "start_seconds": 14.2}
    {"event": "error", "message": "..."}                 (then exit with one of the EXIT_ codes)

Then one request per stdin line and one response per stdout line, in order:

    {"id": 3, "prompts": [[1, 5, 9], ...], "n": 4, "temperature": 0.7, "top_p": 0.9, "top_k": 0,
     "max_new_tokens": 64, "seed": 11, "stop_token_ids": [2]}
    {"id": 3, "outputs": [[{"token_ids": [...], "finished": true}, ... n], ... one per prompt],
     "seconds": 1.9}
    {"id": 3, "error": "...", "fatal": false}            (fatal: the engine is gone, the worker exits)

`token_ids` are new tokens only and end with the stop token when one ended the sample;
`finished` says so. Sample j of prompt i is seeded with seed + i * n + j (vLLM seeds sample j of a
request with the request's seed + j), so every sequence has its own seed and a prompt's samples do
not depend on the other prompts of the request or on how vLLM batches them. End of stdin ends the
worker with exit 0.
"""

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time

EXIT_USAGE, EXIT_MODEL, EXIT_ENGINE, EXIT_NO_VLLM = 2, 3, 4, 5

# Set before vLLM, transformers or huggingface_hub are imported; the caller's values win.
ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
}


class WorkerError(Exception):
    """A failure the worker reports as one line and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class BadRequest(ValueError):
    """A request the worker refuses without touching the engine (it keeps serving)."""


# ---------------------------------------------------------------- process set-up


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="import vLLM, print its version and exit")
    parser.add_argument("--model", help="local Hugging Face model directory (config.json + safetensors)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--cpu-kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--cpu-threads", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--scratch-dir", default=None,
                        help="temp folder for vLLM's files, removed by the caller (default: a private one)")
    args = parser.parse_args(argv)
    if not args.check and not args.model:
        parser.error("--model is required (or --check)")
    return args


def prepare_process(args: argparse.Namespace) -> None:
    """Environment of this process and of anything vLLM starts; must run before torch is imported."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # vLLM leaves ZMQ sockets and gloo FileStore files in the temp dir, and keeps a cache under
    # ~/.cache/vllm: a private folder keeps them out of the machine's. The caller's is removed by the
    # caller (also when this process is killed); one of our own is removed at exit.
    private = args.scratch_dir
    if private is None:
        private = tempfile.mkdtemp(prefix="selfreward-vllm-")
        atexit.register(shutil.rmtree, private, ignore_errors=True)
    os.makedirs(private, exist_ok=True)
    os.environ["TMPDIR"] = tempfile.tempdir = private
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(private, "cache"))
    # The CPU platform lets this variable override the KV size given to the engine: the config decides.
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    # In-process the engine does not bind OpenMP threads itself; more threads than free cores makes
    # OpenMP wait for busy cores (about 5x slower on 2 shared cores).
    threads = args.cpu_threads or max(1, (os.cpu_count() or 2) - 1)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def protocol_stream():
    """A private copy of stdout for protocol lines; fd 1 then goes to stderr (the log)."""
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    return stream


def import_engine():
    """Import torch and vLLM, naming a broken environment as such (not as a model problem)."""
    try:
        import torch
        import vllm
        from vllm.config import ModelConfig  # noqa: F401  (loads transformers' model classes)
    except Exception as err:  # noqa: BLE001 - any import failure means this venv cannot run vLLM
        hint = ""
        if any(name in str(err) for name in ("torchvision", "torchaudio", "torchcodec")):
            hint = " (CUDA builds of torchvision/torchaudio/torchcodec: uninstall them from this venv)"
        raise WorkerError(EXIT_NO_VLLM, f"vLLM is not importable by {sys.executable}: "
                                        f"{type(err).__name__}: {err}{hint}; run `make vllm-env`") from err
    return torch, vllm


# ---------------------------------------------------------------- the engine


def read_model_config(model_dir: str) -> dict:
    """config.json of a local model directory with safetensors weights (vLLM reports these late)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        # vLLM would take the path for a hub repo id and fail with a validation error
        raise WorkerError(EXIT_MODEL, f"model directory '{model_dir}' has no config.json (local directories only)")
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except ValueError as err:
        raise WorkerError(EXIT_MODEL, f"model directory '{model_dir}': config.json is not valid JSON: {err}") from err
    if not any(name.endswith(".safetensors") for name in os.listdir(model_dir)):
        # vLLM starts the engine first and fails ~25 s later with "Engine core initialization failed"
        raise WorkerError(EXIT_MODEL, f"model directory '{model_dir}' has no *.safetensors weights")
    return config.get("text_config", config)


def check_head_dim(config: dict, model_dir: str) -> None:
    """vLLM's CPU attention supports a few head sizes and only says so at the first forward pass."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    head_dim = config.get("head_dim") or (hidden // heads if heads and hidden else None)
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim is not None and head_dim not in supported:
        raise WorkerError(EXIT_MODEL, f"model '{model_dir}' has head_dim={head_dim}; vLLM's CPU attention "
                                      f"supports only {supported} (a tiny model: fewer heads, e.g. hidden 64 / 2 heads)")


def resolve_dtype(requested: str, torch) -> str:
    """Never vLLM's "auto": on CPU it turns float32 checkpoints into bfloat16."""
    if requested != "auto":
        return requested
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def build_llm(args: argparse.Namespace, config: dict, on_gpu: bool, dtype: str):
    from vllm import LLM

    context = int(config.get("max_position_embeddings") or 8192)
    settings = {
        "model": args.model,
        "skip_tokenizer_init": True,  # token ids in and out; the caller owns the tokenizer
        "dtype": dtype,
        "seed": 0,
        "tensor_parallel_size": args.tensor_parallel_size,
        "enable_prefix_caching": True,  # the judge template's KV is computed once and shared
        "max_num_seqs": args.max_num_seqs,
        "generation_config": "vllm",  # the model's generation_config.json must not change sampling
        "disable_log_stats": True,
        "use_tqdm_on_load": False,
    }
    if on_gpu:
        settings["gpu_memory_utilization"] = args.gpu_memory_utilization
    else:
        settings.update(
            # Without a size the CPU worker claims ~90% of the node's memory and fails when it is not free.
            kv_cache_memory_bytes=int(args.cpu_kv_cache_gib * (1 << 30)),
            # torch.compile adds 20-40 s to every start and gained nothing on CPU here.
            enforce_eager=True,
            # A seeded request whose prompt is split over two steps kills the CPU engine ("CPU
            # Generator does not use offset"): no chunking, so a step must hold a whole prompt.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(8192, context),
        )
    return LLM(**settings)


def start_engine(args: argparse.Namespace) -> tuple:
    """(LLM, the ready line) for `args.model`; WorkerError when it cannot be started."""
    started = time.perf_counter()
    torch, vllm = import_engine()
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        # The engine core runs in this process: ~4 s to start instead of ~25 s for vLLM's default
        # of spawning an engine process and a worker process that each import vLLM again.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    config = read_model_config(args.model)
    if not on_gpu:
        check_head_dim(config, args.model)
    dtype = resolve_dtype(args.dtype, torch)
    try:
        llm = build_llm(args, config, on_gpu, dtype)
    except Exception as err:  # noqa: BLE001 - vLLM raises ValueError, RuntimeError, OSError, pydantic errors...
        reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:800]
        raise WorkerError(EXIT_MODEL, f"vLLM could not load '{args.model}': {type(err).__name__}: {reason}") from err
    ready = {
        "event": "ready",
        "vllm": vllm.__version__,
        "device": "cuda" if on_gpu else "cpu",
        "dtype": dtype,
        "max_model_len": llm.llm_engine.model_config.max_model_len,
        "start_seconds": round(time.perf_counter() - started, 3),
    }
    return llm, ready


# ---------------------------------------------------------------- requests


def _check_request(request: dict, max_model_len: int) -> list[list[int]]:
    prompts = request.get("prompts")
    if not isinstance(prompts, list) or not all(
        isinstance(p, list) and p and all(isinstance(t, int) and t >= 0 for t in p) for p in prompts
    ):
        raise BadRequest("'prompts' must be a list of non-empty lists of token ids")
    too_long = [i for i, p in enumerate(prompts) if len(p) >= max_model_len]
    if too_long:  # vLLM would fail the whole batch on one of them
        raise BadRequest(f"prompts {too_long[:10]} have >= max_model_len={max_model_len} tokens")
    if int(request.get("n", 1)) < 1 or int(request.get("max_new_tokens", 1)) < 1:
        raise BadRequest("'n' and 'max_new_tokens' must be >= 1")
    return prompts


def sampling_params(request: dict, prompts: list[list[int]], max_model_len: int, vocab_size: int) -> list:
    """One SamplingParams per prompt: its own seed and its own budget (the context caps new tokens)."""
    from vllm import SamplingParams

    n, seed = int(request.get("n", 1)), int(request.get("seed", 0))
    # vLLM refuses stop ids outside the vocabulary; they can never be sampled, so dropping them changes nothing.
    stops = [int(t) for t in request.get("stop_token_ids", []) if 0 <= int(t) < vocab_size]
    temperature = float(request.get("temperature", 0.0))
    greedy = temperature == 0.0
    shared = {
        "n": 1 if greedy else n,  # vLLM refuses n > 1 when greedy: the one sample is copied
        "temperature": temperature,
        "top_p": 1.0 if greedy else float(request.get("top_p", 1.0)),
        "top_k": 0 if greedy else int(request.get("top_k", 0)),
        "stop_token_ids": stops,
        "ignore_eos": True,  # stop on the caller's ids only, never on an EOS vLLM would add
        "detokenize": False,
    }
    max_new = int(request.get("max_new_tokens", 16))
    # Seeds stay below 2**63 (callers' seeds reach 2**63 - 1; torch takes up to 2**64 - 1 with vLLM's + j).
    return [SamplingParams(seed=(seed + i * n) % 2**63, max_tokens=min(max_new, max_model_len - len(p)), **shared)
            for i, p in enumerate(prompts)]


def generate(llm, request: dict, max_model_len: int) -> dict:
    """The response line of one request. `BadRequest` (raised before the engine runs) and vLLM's own
    refusals leave the worker serving (see `serve`); any other error ends it."""
    from vllm.inputs import TokensPrompt

    started = time.perf_counter()
    prompts = _check_request(request, max_model_len)
    params = sampling_params(request, prompts, max_model_len, llm.llm_engine.model_config.get_vocab_size())
    n, stop = int(request.get("n", 1)), {int(t) for t in request.get("stop_token_ids", [])}
    results = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    outputs = []
    for result in results:  # in prompt order
        samples = [{"token_ids": list(c.token_ids), "finished": bool(c.token_ids) and c.token_ids[-1] in stop}
                   for c in sorted(result.outputs, key=lambda c: c.index)]
        outputs.append(samples * n if len(samples) == 1 else samples)
    return {"id": request.get("id"), "outputs": outputs, "seconds": round(time.perf_counter() - started, 4)}


def serve(llm, max_model_len: int, requests, protocol) -> int:
    """Answer request lines until stdin ends; returns the exit code."""
    from vllm.exceptions import VLLMClientError  # vLLM refused the request; the engine is fine

    for line in requests:
        if not line.strip():
            continue
        request: dict = {}
        try:
            request = json.loads(line)
            response = generate(llm, request, max_model_len)
        except (ValueError, TypeError, AttributeError, VLLMClientError) as err:  # BadRequest, bad JSON, ...
            response = {"id": request.get("id") if isinstance(request, dict) else None,
                        "error": f"request refused: {type(err).__name__}: {err}", "fatal": False}
        except Exception as err:  # noqa: BLE001 - the engine failed; report it and stop
            protocol.write(json.dumps({"id": request.get("id"), "error": f"generation failed: "
                                       f"{type(err).__name__}: {err}", "fatal": True}) + "\n")
            return EXIT_ENGINE
        protocol.write(json.dumps(response) + "\n")
    return 0


# ---------------------------------------------------------------- entry point


def check_environment() -> int:
    """`--check`: what `make vllm-env` runs after installing."""
    try:
        torch, vllm = import_engine()
    except WorkerError as err:
        print(f"vllm-worker: {err}", file=sys.stderr)
        return err.code
    import transformers

    print(f"vLLM {vllm.__version__} (torch {torch.__version__}, transformers {transformers.__version__}) "
          f"is importable by {sys.executable}")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    prepare_process(args)
    if args.check:
        return check_environment()
    protocol = protocol_stream()
    try:
        llm, ready = start_engine(args)
    except WorkerError as err:
        protocol.write(json.dumps({"event": "error", "message": str(err)}) + "\n")
        return err.code
    protocol.write(json.dumps(ready) + "\n")
    return serve(llm, ready["max_model_len"], sys.stdin, protocol)


if __name__ == "__main__":  # required: vLLM may spawn processes that import __main__ again
    sys.exit(main(sys.argv[1:]))
