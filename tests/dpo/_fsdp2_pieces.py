"""Our code under real FSDP2 sharding on CPU (gloo, 2 processes), for test_ddp.py; one JSON per rank.

Usage: accelerate launch --multi_gpu --num_processes 2 tests/dpo/_fsdp2_pieces.py OUT_DIR

accelerate cannot prepare FSDP on a CPU, so the DPO objective is sharded here the way accelerate's
FSDP2 plugin shards it (`fully_shard` on each decoder layer, then on the root). Then the reference
precompute (it calls the policy directly, not through the root's forward) runs on 9 pairs, so the
ranks hold uneven shares, and the full state dict is gathered and the policy's part saved, as
`TrainingLoop.save_on_main` does with `accelerator.get_state_dict` under FSDP2.
"""

import json
import sys
from pathlib import Path

from accelerate import Accelerator
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from dpo import DPO, DPODataset, save_checkpoint, write_preference_memmaps
from dpo.loop import submodule_state
from dpo.trainer import reference_logps
from tests.dpo._helpers import clear_preference_rows, tiny_llama


def main(out_dir: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    dpo = DPO(tiny_llama(seed=0, layers=2, tie=True))
    dataset = DPODataset(write_preference_memmaps(out_dir / f"data{rank}", clear_preference_rows(9)))
    whole = reference_logps(dpo, dataset, 2, accelerator)  # every rank holds every weight here

    mesh = init_device_mesh("cpu", (accelerator.num_processes,))
    for layer in [m for m in dpo.modules() if isinstance(m, LlamaDecoderLayer)]:
        fully_shard(layer, mesh=mesh)
    fully_shard(dpo, mesh=mesh)
    sharded = reference_logps(dpo, dataset, 2, accelerator)
    state = get_model_state_dict(dpo, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_checkpoint(dpo.policy, out_dir / "model", state_dict=submodule_state(state, dpo, dpo.policy))
    params = list(dpo.policy.parameters())
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "sharded_params": sum(isinstance(p, DTensor) for p in params), "params": len(params),
        "local_elements": sum(p.to_local().numel() for p in params), "elements": sum(p.numel() for p in params),
        "max_diff": float((whole - sharded).abs().max()), "ref_logps": whole.tolist(),
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
