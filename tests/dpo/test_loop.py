"""TrainingLoop: round length, per-round data order and schedule, sharded passes, summaries."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from dpo import OptimSettings
from dpo.loop import TrainingLoop, iter_shard_batches, summarize
from tests.dpo._helpers import TinyLM


class Objective(torch.nn.Module):
    """The policy's mean output as a loss: enough for the loop's bookkeeping."""

    def __init__(self):
        super().__init__()
        self.policy = TinyLM()

    def forward(self, seq):
        from dpo import StepOutput

        loss = self.policy(seq).mean()
        return StepOutput(loss=loss, metrics={"loss": loss.detach()}, num_tokens=seq.numel())


def loop(accelerator, **optim):
    objective = Objective()
    return TrainingLoop(objective, objective.policy, input_keys=("seq",), optim=OptimSettings(**optim),
                        accelerator=accelerator)


@pytest.mark.parametrize(("steps", "epochs", "expected"), [(None, None, 3), (2, None, 2), (None, 2, 6), (4, 3, 4)])
def test_round_length_is_the_smaller_limit_and_one_epoch_by_default(accelerator, steps, epochs, expected):
    training = loop(accelerator, batch_size=2, grad_accum_steps=2, num_train_steps=steps, num_epochs=epochs)
    assert training.plan_steps(num_batches=6) == expected  # 6 batches, 2 per optimizer step


def test_each_round_has_its_own_data_order_and_a_fresh_schedule(accelerator):
    training = loop(accelerator, batch_size=4, start_learning_rate=1e-2, end_learning_rate=1e-3, dropout=0.0)
    data = [{"seq": torch.arange(i, i + 5) % 64} for i in range(16)]
    first, steps = training.begin_round(data)
    order_one = [b["seq"][:, 0].tolist() for b in (next(first) for _ in range(4))]
    lrs = [training.train_step(first)["learning_rate"] for _ in range(steps)]
    second, _ = training.begin_round(data)
    order_two = [b["seq"][:, 0].tolist() for b in (next(second) for _ in range(4))]
    assert sorted(sum(order_one, [])) == sorted(sum(order_two, [])) == list(range(16)) and order_one != order_two
    assert lrs == pytest.approx([1e-2, 7e-3, 4e-3, 1e-3])
    assert training.train_step(second)["learning_rate"] == pytest.approx(1e-2)  # the schedule restarted


def test_sharded_passes_see_every_example_once_in_length_order(accelerator):
    data = TensorDataset(torch.arange(7))
    lengths = [5, 1, 4, 2, 7, 3, 6]
    seen = [(positions.tolist(), batch[0].tolist()) for positions, batch in iter_shard_batches(data, 3, accelerator, lengths)]
    assert seen == [([1, 3, 5], [1, 3, 5]), ([2, 0, 6], [2, 0, 6]), ([4], [4])]


def test_every_process_runs_as_many_sharded_batches():
    data = TensorDataset(torch.arange(9))
    shares = []
    for rank in (0, 1):
        process = SimpleNamespace(process_index=rank, num_processes=2, device=torch.device("cpu"))
        shares.append([(positions.tolist(), batch[0].tolist()) for positions, batch in iter_shard_batches(data, 2, process)])
    assert shares[0] == [([0, 2], [0, 2]), ([4, 6], [4, 6]), ([8], [8])]
    assert shares[1] == [([1, 3], [1, 3]), ([5, 7], [5, 7]), ([], [0])]  # a filler: computed, then ignored


def test_summary_has_final_and_mean_of_every_metric():
    assert summarize([{"loss": 1.0, "acc": 0.0}, {"loss": 0.5, "acc": 1.0}]) == {
        "final/loss": 0.5, "final/acc": 1.0, "mean/loss": 0.75, "mean/acc": 0.5}
    assert summarize([]) == {}


def test_accumulation_belongs_to_the_settings_not_the_accelerator():
    from accelerate import Accelerator

    with pytest.raises(ValueError, match="grad_accum_steps in OptimSettings"):
        loop(Accelerator(cpu=True, gradient_accumulation_steps=2))
    with pytest.raises(ValueError, match="batch_size=0 is invalid"):
        OptimSettings(batch_size=0)


def test_epoch_loss_is_logged_once_per_epoch_and_at_the_round_end(accelerator):
    # 10 examples, batch 2, 2 per optimizer step: 3 steps per epoch (the last one short); 7 steps
    # end mid-way through the third epoch.
    training = loop(accelerator, batch_size=2, grad_accum_steps=2, num_train_steps=7, num_epochs=3)
    _, total = training.begin_round([{"seq": torch.arange(5)} for _ in range(10)])
    losses = [0.9, 0.7, 0.8, 0.4, 0.6, 0.2, 0.3]
    history, logged = [], {}
    for step, loss in enumerate(losses, start=1):
        history.append({"loss": loss})
        if point := training.epoch_mean(history, total):
            logged[step] = point["epoch_loss"]
    assert total == 7
    assert logged == pytest.approx({3: (0.9 + 0.7 + 0.8) / 3, 6: (0.4 + 0.6 + 0.2) / 3, 7: 0.3})
