"""Two-process LoRA DPO round for test_ddp.py (CPU, gloo): `train_dpo` with adapters under DDP, the
reference computed live (adapters switched off inside the DDP forward); writes one JSON per rank.

Usage: accelerate launch --multi_gpu --num_processes 2 tests/dpo/_ddp_lora_train.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from dpo import LoraSettings, LossSettings, OptimSettings, train_dpo, write_preference_memmaps
from tests._tiny import tiny_llama


def main(out_dir: Path) -> None:
    rank = PartialState(cpu=True).process_index
    model = tiny_llama(seed=0)
    gen = torch.Generator().manual_seed(0)
    rows = [(torch.randint(3, 64, (3,), generator=gen).tolist(), [1, 1, 1], [2, 2]) for _ in range(16)]
    pairs = write_preference_memmaps(out_dir / f"data{rank}", rows)
    summary = train_dpo(
        model, pairs, loss=LossSettings(beta=0.1), lora=LoraSettings(r=4), adapter_dir=out_dir / "adapter",
        optim=OptimSettings(batch_size=2, num_train_steps=4, start_learning_rate=1e-2, end_learning_rate=1e-3,
                            dropout=0.0),
        precompute_ref_logps=False, vocab_size=64, seed=0,
    )
    result = {
        "rank": rank,
        "steps": summary["steps"],
        "checksum": sum(float(v.double().sum()) for v in model.state_dict().values()),
        "changed": sum(int(not torch.equal(v, tiny_llama(seed=0).state_dict()[k])) for k, v in model.state_dict().items()),
        "accuracy": summary["final/rewards/accuracies"],
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
