"""Two-process DPO run for test_ddp.py (CPU, gloo); writes one JSON result per rank.

Usage: accelerate launch --multi_gpu --num_processes 2 tests/dpo/_ddp_train.py OUT_DIR

Rank 0's evaluator scores 1.0, 0.5, 0.7, 0.9, ... (best at evaluation 2, then two worse ones:
stop at step 4 with patience 2). Rank 1's evaluator improves at every call, so it would never
stop on its own: both ranks stopping at step 4 shows the main process's score is shared.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import default_collate

from dpo import DPO, DPODataset, DPOTrainer, EarlyStopping, OptimSettings, write_preference_memmaps
from tests._tiny import tiny_llama

MAIN_SCORES = [1.0, 0.5, 0.7, 0.9, 0.1, 0.05, 0.01, 0.0, 0.0, 0.0]


def main(out_dir: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    model = tiny_llama(seed=0, tie=True)
    gen = torch.Generator().manual_seed(0)
    rows = [(torch.randint(3, 64, (3,), generator=gen).tolist(), [1, 1, 1], [2, 2]) for _ in range(16)]
    dataset = DPODataset(write_preference_memmaps(out_dir / f"data{rank}", rows), vocab_size=64)
    calls: list[float] = []

    def evaluator(policy: torch.nn.Module) -> float:
        calls.append(0.0)
        return MAIN_SCORES[len(calls) - 1] if rank == 0 else -float(len(calls))

    trainer = DPOTrainer(
        DPO(model), train_dataset=dataset, valid_dataset=dataset, accelerator=accelerator, evaluator=evaluator,
        optim=OptimSettings(batch_size=2, num_train_steps=10, start_learning_rate=1e-3, end_learning_rate=1e-4, dropout=0.0),
        early_stopping=EarlyStopping(eval_every=1, patience=2), checkpoint_dir=out_dir / "ckpt",
    )
    summary = trainer.train()
    policy = trainer.dpo.policy
    sharded_valid = trainer.validation_loss()  # each rank scores half of the pairs, then all-reduce
    with torch.no_grad():
        everything = default_collate([dataset[i] for i in range(len(dataset))])
        local_valid = trainer.dpo.eval()(everything["chosen"], everything["rejected"], everything["prompt_len"])
    result = {
        "rank": rank,
        "world": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "steps": summary["steps"],
        "stopped_early": summary["stopped_early"],
        "best_step": summary["best_step"],
        "best_score": summary["best_score"],
        "checksum": sum(float(v.double().sum()) for v in policy.state_dict().values()),
        "accuracy": summary["final/rewards/accuracies"],
        "sharded_valid": sharded_valid,
        "local_valid": float(local_valid.loss),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
