"""The DPO benchmark's shared setup: model size, synthetic preference pairs, the model, TRL's text view.

Used by `bench_dpo.py` (ours vs TRL) and `bench_ceiling.py` (achieved FLOP/s of our trainer).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
FIRST_WORD_ID = 4  # synthetic token ids are drawn from [FIRST_WORD_ID, vocab)


@dataclass(frozen=True)
class Setup:
    """Model size, data shape and schedule of one benchmark configuration."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 688
    vocab: int = 2048
    batch_size: int = 4  # pairs per step (2 x batch_size rows per forward)
    steps_per_epoch: int = 6
    epochs: int = 2  # the demo's DPO num_epochs
    max_len: int = 96
    prompt_len: tuple[int, int] = (16, 32)  # inclusive ranges
    response_len: tuple[int, int] = (16, 64)  # EOS included
    learning_rate: float = 5e-6
    beta: float = 0.1
    repeats: int = 5
    seed: int = 0

    @property
    def num_pairs(self) -> int:
        return self.batch_size * self.steps_per_epoch

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs  # whole epochs: every contender sees every pair equally


FULL = Setup()
QUICK = Setup(hidden=128, layers=2, intermediate=344, vocab=1024, batch_size=4, steps_per_epoch=2, max_len=64,
              prompt_len=(8, 24), response_len=(8, 40), repeats=1)


# ---------------------------------------------------------------- data and model


Pair = tuple[list[int], list[int], list[int]]  # prompt, chosen, rejected (responses end with EOS)


def make_pairs(setup: Setup) -> list[Pair]:
    """Random preference pairs with random prompt / response lengths (fixed seed)."""
    rng = np.random.default_rng(setup.seed)

    def ids(n: int) -> list[int]:
        return rng.integers(FIRST_WORD_ID, setup.vocab, size=n).tolist()

    pairs = []
    for _ in range(setup.num_pairs):
        prompt = ids(int(rng.integers(setup.prompt_len[0], setup.prompt_len[1] + 1)))
        lo, hi = setup.response_len
        chosen, rejected = (ids(int(rng.integers(lo, hi + 1)) - 1) + [EOS_ID] for _ in range(2))
        pairs.append((prompt, chosen, rejected))
    return pairs


def trained_tokens(pairs: list[Pair]) -> int:
    """Non-pad tokens of the chosen and rejected rows (prompt + response each) over the whole set."""
    return sum(2 * len(p) + len(c) + len(r) for p, c, r in pairs)


def shared_prompt_tokens(pairs: list[Pair]) -> int:
    """Tokens our trainer actually runs per epoch: one row per pair with the prompt once (dpo.shared_prompt)."""
    return sum(len(p) + len(c) + len(r) for p, c, r in pairs)


def build_model(setup: Setup, gpu: bool = False):
    """A fresh LlamaForCausalLM with the same weights every call (fp32, dropout 0, SDPA attention), built
    on the GPU when `gpu` (initialising a few hundred million weights on the CPU takes seconds)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=setup.vocab,
        hidden_size=setup.hidden,
        intermediate_size=setup.intermediate,
        num_hidden_layers=setup.layers,
        num_attention_heads=setup.heads,
        num_key_value_heads=setup.heads,
        max_position_embeddings=2 * setup.max_len,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        attn_implementation="sdpa",
    )
    device = torch.device("cuda" if gpu else "cpu")
    with torch.random.fork_rng(devices=[device] if gpu else []), device:
        torch.manual_seed(setup.seed)
        return LlamaForCausalLM(config).float()


def param_counts(model) -> dict[str, int]:
    """Total, input-embedding and "compute" parameters (everything but the embedding lookup)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def word_tokenizer(vocab: int):
    """A word-level HF tokenizer where "t<id>" is token <id>: TRL's text interface gives back our ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": PAD_ID, "<bos>": BOS_ID, "<eos>": EOS_ID, "<unk>": UNK_ID}
    words.update({f"t{i}": i for i in range(FIRST_WORD_ID, vocab)})
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def as_text(ids: list[int]) -> str:
    return " ".join("<eos>" if i == EOS_ID else f"t{i}" for i in ids)


def trl_dataset(pairs: list[Pair]):
    """prompt / chosen / rejected as text; the prompt ends with a space so concatenation splits cleanly."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [as_text(p) + " " for p, _, _ in pairs],
        "chosen": [as_text(c) for _, c, _ in pairs],  # ends with "<eos>": TRL adds no second EOS
        "rejected": [as_text(r) for _, _, r in pairs],
    })


def write_pairs(pairs: list[Pair], folder: Path) -> Path:
    import dpo

    return dpo.write_preference_memmaps(folder, pairs, max_len=max(len(p) + max(len(c), len(r)) for p, c, r in pairs))
