import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from dpo import (
    PROMPT_LEN_FILE,
    SFT_SEQ_FILE,
    OptimSettings,
    SFTDataError,
    SFTDataset,
    SFTTrainer,
    sft_loss,
    write_sft_memmaps,
)
from tests.dpo._helpers import VOCAB, tiny_llama

EXAMPLES = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([15, 16], [17])]


def test_sft_loss_matches_brute_force_cross_entropy():
    torch.manual_seed(0)
    batch = default_collate([SFTDataset.from_pairs(EXAMPLES, max_len=6)[i] for i in range(3)])
    seq, prompt_len = batch["seq"], batch["prompt_len"]
    logits = torch.randn(3, 6, VOCAB)
    loss, count = sft_loss(logits, seq, prompt_len)
    # brute force: label every response token at its own position, predict from position - 1
    labels = torch.full_like(seq, -100)
    for i, (prompt, response) in enumerate(EXAMPLES):
        labels[i, len(prompt) : len(prompt) + len(response)] = torch.tensor(response)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert count.item() == sum(len(r) for _, r in EXAMPLES)  # response in, prompt and padding out
    torch.testing.assert_close(loss, expected)
    # logits that predict prompt tokens do not matter; logits that predict response tokens do
    shifted = logits.clone()
    shifted[0, 0] += 5 * torch.randn(VOCAB)  # predicts prompt token 6
    assert torch.equal(sft_loss(shifted, seq, prompt_len)[0], loss)
    shifted[0, 2] += 5 * torch.randn(VOCAB)  # predicts response token 8
    assert not torch.equal(sft_loss(shifted, seq, prompt_len)[0], loss)


def test_sft_training_lowers_loss(accelerator, tmp_path):
    gen = torch.Generator().manual_seed(0)
    examples = [(torch.randint(3, VOCAB, (3,), generator=gen).tolist(), [1, 2, 1, 2]) for _ in range(16)]
    dataset = SFTDataset(write_sft_memmaps(tmp_path, examples, max_len=8), vocab_size=VOCAB)
    logs = []
    trainer = SFTTrainer(
        tiny_llama(), train_dataset=dataset, valid_dataset=dataset, accelerator=accelerator, log_fn=lambda m, s: logs.append(m),
        optim=OptimSettings(batch_size=16, start_learning_rate=3e-3, end_learning_rate=1e-3, num_train_steps=12, dropout=0.0),
    )
    before = trainer.evaluate()
    summary = trainer.train()
    steps = [m for m in logs if "eval/loss" not in m]
    assert len(steps) == 12 and set(steps[0]) == {"loss", "grad_norm", "learning_rate", "tokens_per_second", "epoch_loss"}
    assert all(m["epoch_loss"] == m["loss"] for m in steps)  # one batch per epoch: each step is an epoch
    assert summary["valid_loss"] < before - 1.0 and steps[-1]["loss"] < steps[0]["loss"]
    assert steps[0]["loss"] == pytest.approx(before, rel=1e-4)  # same masking in train and eval
    assert logs[-1] == {"eval/loss": summary["valid_loss"]}


def test_from_pairs_truncates_long_responses_and_rejects_bad_examples():
    dataset = SFTDataset.from_pairs([([1, 2], [3, 4, 5, 6])], max_len=4)
    assert dataset[0]["seq"].tolist() == [1, 2, 3, 4] and dataset[0]["prompt_len"].item() == 2
    with pytest.raises(SFTDataError, match="example 0"):
        SFTDataset.from_pairs([([1, 2, 3, 4], [5])], max_len=4)
    with pytest.raises(SFTDataError, match="example 1"):
        SFTDataset.from_pairs([([1], [2]), ([1], [])], max_len=4)


def test_folder_round_trip_and_validation(tmp_path):
    write_sft_memmaps(tmp_path, EXAMPLES, max_len=6)
    item = SFTDataset(tmp_path)[1]
    assert item["seq"].tolist() == [10, 11, 12, 13, 14, -1] and item["prompt_len"].item() == 1
    with pytest.raises(SFTDataError, match="token id >= vocab_size 16"):
        SFTDataset(tmp_path, vocab_size=16)
    np.save(tmp_path / PROMPT_LEN_FILE, np.array([3, 6, 2]))
    with pytest.raises(SFTDataError, match="prompt_len"):
        SFTDataset(tmp_path)
    (tmp_path / SFT_SEQ_FILE).unlink()
    with pytest.raises(SFTDataError, match=f"{SFT_SEQ_FILE}: file not found"):
        SFTDataset(tmp_path)
