"""Tiny real models and data for the dpo tests (kept small for a busy 2-core machine)."""

import torch
from torch import nn

from tests._tiny import VOCAB, tiny_llama  # noqa: F401  (re-exported for the dpo tests)

CHOSEN_TOKEN, REJECTED_TOKEN = 1, 2


class TinyLM(nn.Module):
    """Plain torch causal LM: ids (B, T) -> logits (B, T, V), with tied input/output weights."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(0.0)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # shared tensor, as in tied LMs

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)  # (B, T, D)
        # causal running mean so each position sees its prefix
        counts = torch.arange(1, ids.shape[1] + 1, device=ids.device).view(1, -1, 1)
        hidden = torch.tanh(self.mix(hidden.cumsum(dim=1) / counts))
        return self.head(self.dropout(hidden))


def clear_preference_rows(n: int, seed: int = 0, response_len: int = 4):
    """Pairs whose chosen response is always CHOSEN_TOKEN and rejected always REJECTED_TOKEN."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        prompt_len = int(torch.randint(2, 6, (1,), generator=gen))
        prompt = torch.randint(3, VOCAB, (prompt_len,), generator=gen).tolist()
        rows.append((prompt, [CHOSEN_TOKEN] * response_len, [REJECTED_TOKEN] * (response_len - 1)))
    return rows


def random_rows(n: int, seed: int = 0, max_prompt: int = 6, max_response: int = 6):
    """Pairs of random prompts and random responses of varied lengths."""
    gen = torch.Generator().manual_seed(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return torch.randint(0, VOCAB, (int(torch.randint(lo, hi + 1, (1,), generator=gen)),), generator=gen).tolist()

    return [(ids(1, max_prompt), ids(1, max_response), ids(1, max_response)) for _ in range(n)]


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


def settings(**flat):
    """Trainer keyword arguments written flat, as the tests do, with the optimizer and early-stopping
    fields gathered into `optim=OptimSettings(...)` and `early_stopping=EarlyStopping(...)`."""
    from dataclasses import fields

    from dpo import EarlyStopping, OptimSettings

    optim = {f.name: flat.pop(f.name) for f in fields(OptimSettings) if f.name in flat}
    renamed = {"eval_every": "eval_every", "early_stopping_patience": "patience",
               "higher_is_better": "higher_is_better", "eval_at_start": "eval_at_start"}
    stop = {new: flat.pop(old) for old, new in renamed.items() if old in flat}
    return {**flat, "optim": OptimSettings(**optim), **({"early_stopping": EarlyStopping(**stop)} if stop else {})}
