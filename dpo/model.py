"""`DPO`: a policy, its reference model and the preference objective in one module.

The reference is either a frozen deep copy of the policy (`ref_ema_decay == 1`, the paper's
setting: M_t is the reference while training M_{t+1}) or an exponential moving average of
the policy (`ref_ema_decay < 1`), updated after every optimizer step by the trainer:

    ref <- decay * ref + (1 - decay) * policy

A LoRA policy (a peft model, see `dpo.lora`) has no second copy: its reference is the policy run
with its adapters disabled, i.e. its frozen base weights (M_t when the adapters are fresh). An EMA
reference would need those weights to move, so it is refused for a LoRA policy.

ema-pytorch 0.8.3's `EMA.update()` is deliberately not used: its first call copies the policy
into the EMA (`initted` flag) and `get_current_decay()` returns 0 (a full copy) for the first
`update_after_step + 1` calls before ramping up with `inv_gamma`/`power`, so a reference meant to
stay M_t would end the warm-up as a copy of the policy. We call
`EMA.update_moving_average` with the constant decay instead, so the reference moves from
step 1 exactly by the formula above.
"""

import contextlib
from collections.abc import Iterator

import torch
from ema_pytorch import EMA
from torch import nn

from ._modeling import frozen_copy, is_adapter_model, trim_right_padding
from ._types import LossType, Reduction, StepOutput
from .logprobs import REDUCTIONS, mean_token_nll, response_logprobs
from .loss import preference_loss, validate_loss_args
from .shared_prompt import shared_prompt_logprobs, shared_prompt_pays_off, supports_shared_prompt

__all__ = ["DPO"]


class DPO(nn.Module):
    """Direct Preference Optimization around any causal LM.

    Args:
        model: The policy: a HF causal LM or a module mapping ids (B, T) to logits (B, T, V), or a
            peft model (LoRA adapters, `dpo.lora.add_lora`) whose reference is its base weights.
        beta: β of the implicit reward β·log(πθ/πref).
        loss_type: "sigmoid", "ipo", "hinge" or "robust" (see `dpo.loss`).
        label_smoothing: ε for "sigmoid" (cDPO) and "robust".
        nll_weight: Weight of an added NLL term on the chosen response (RPO / DPO+NLL); 0 = off.
        ref_ema_decay: 1.0 keeps the reference frozen; < 1 makes it an EMA of the policy.
        reduction: How token log-probs become a sequence score: "sum" (DPO) or "mean".
        share_prompt: Score chosen and rejected in one row that holds the prompt once (see
            `dpo.shared_prompt`) where the model supports it and the batch is cheaper that way;
            False always uses two rows per pair.
        replay_weight: Weight of the NLL of replayed SFT examples (`replay_seq`), e.g. judge data
            kept in every DPO round so the judge keeps its format.
    """

    def __init__(
        self,
        model: nn.Module,
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        nll_weight: float = 0.0,
        ref_ema_decay: float = 1.0,
        reduction: Reduction = "sum",
        share_prompt: bool = True,
        replay_weight: float = 1.0,
    ) -> None:
        super().__init__()
        validate_loss_args(loss_type, beta, label_smoothing)
        if not 0.0 <= ref_ema_decay <= 1.0:
            raise ValueError(f"ref_ema_decay must be in [0, 1], got {ref_ema_decay!r}")
        if nll_weight < 0 or replay_weight < 0:
            raise ValueError(f"nll_weight and replay_weight must be >= 0, got {nll_weight!r}, {replay_weight!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {sorted(REDUCTIONS)}, got {reduction!r}")
        self.policy = model
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.nll_weight, self.ref_ema_decay, self.reduction = nll_weight, ref_ema_decay, reduction
        self.share_prompt, self.replay_weight = share_prompt, replay_weight
        self.ref_ema: EMA | None = None
        # A LoRA policy's reference is its base weights (adapters disabled): no copy is made.
        self.adapter_reference = is_adapter_model(model)
        if self.adapter_reference:
            if not self.ref_is_frozen:
                raise ValueError(
                    f"ref_ema_decay={ref_ema_decay!r} needs a reference that moves, but a LoRA policy's reference is "
                    "its frozen base weights (adapters disabled): use ref_ema_decay=1.0 with LoRA"
                )
            self.ref_model = None
        elif self.ref_is_frozen:
            self.ref_model = frozen_copy(model)
        else:
            # include_online_model=False: the policy is registered once, as `self.policy`.
            self.ref_ema = EMA(
                model,
                ema_model=frozen_copy(model),
                beta=ref_ema_decay,
                update_after_step=0,
                update_every=1,
                include_online_model=False,
            )
            self.ref_ema.initted.fill_(True)  # the copy above is the initial EMA state

    @property
    def ref_is_frozen(self) -> bool:
        """True when the reference never changes within a round (ref_ema_decay == 1)."""
        return self.ref_ema_decay == 1.0

    @property
    def reference(self) -> nn.Module:
        """The reference network: the frozen copy, the EMA weights, or for a LoRA policy the policy
        itself (its reference log-probs come from `ref_logps`, which disables the adapters)."""
        if self.adapter_reference:
            return self.policy
        return self.ref_model if self.ref_ema is None else self.ref_ema.ema_model

    def train(self, mode: bool = True) -> "DPO":
        """Set the policy's mode; the reference always stays in eval mode (no dropout)."""
        super().train(mode)
        if not self.adapter_reference:
            self.reference.eval()
        return self

    @torch.no_grad()
    def update_reference_model_with_policy(self) -> None:
        """Make the reference equal to the policy (start of a DPO round).

        A copy or EMA reference gets the policy's weights and buffers. A LoRA policy's adapters
        are folded into its base weights and reset to the identity (`dpo.lora.fold_adapters`;
        nothing to do when they are fresh, as in a pipeline round), so "adapters disabled" is the
        policy as it is now.
        """
        if self.adapter_reference:
            from .lora import fold_adapters

            fold_adapters(self.policy)
            return
        self.reference.load_state_dict(self.policy.state_dict())

    @contextlib.contextmanager
    def _reference_network(self) -> Iterator[nn.Module]:
        """The network that computes reference log-probs, in eval mode (no dropout) inside the block."""
        if not self.adapter_reference:
            yield self.reference
            return
        from .lora import adapters_disabled

        was_training = self.policy.training
        self.policy.eval()
        try:
            with adapters_disabled(self.policy):
                yield self.policy
        finally:
            self.policy.train(was_training)

    @torch.no_grad()
    def update_reference_ema(self) -> None:
        """One EMA step of the reference toward the policy; a no-op when the reference is frozen."""
        if self.ref_ema is None:
            return
        self.ref_ema.update_moving_average(
            self.ref_ema.ema_model, self.policy, current_decay=self.ref_ema_decay
        )
        self.ref_ema.step += 1

    def _pair_logps(
        self, model: nn.Module, chosen: torch.Tensor, rejected: torch.Tensor, prompt_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token log-probs and masks (2B, R) of rows [chosen; rejected] under `model`, in one forward."""
        prompt_len = prompt_len.to(chosen.device)
        if self.share_prompt and supports_shared_prompt(model):
            hidden_size = getattr(model.config, "hidden_size", None)
            if shared_prompt_pays_off(chosen, rejected, prompt_len, hidden_size):
                return shared_prompt_logprobs(model, chosen, rejected, prompt_len)
        seq = trim_right_padding(torch.cat([chosen, rejected], dim=0))  # (2B, T)
        logps, mask, _ = response_logprobs(model, seq, torch.cat([prompt_len, prompt_len]))
        return logps, mask

    @torch.no_grad()
    def ref_logps(
        self, chosen: torch.Tensor, rejected: torch.Tensor, prompt_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference sequence log-probs, e.g. to precompute them once per round.

        Args:
            chosen: (B, L) prompt + chosen ids, right-padded with negative ids.
            rejected: (B, L) prompt + rejected ids, right-padded with negative ids.
            prompt_len: (B,) prompt lengths.

        Returns:
            `(ref_chosen_logps, ref_rejected_logps)`, each (B,), reduced like the policy's.
        """
        with self._reference_network() as reference:
            logps, mask = self._pair_logps(reference, chosen, rejected, prompt_len)
        return REDUCTIONS[self.reduction](logps, mask).chunk(2)

    def forward(
        self,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        prompt_len: torch.Tensor,
        ref_chosen_logps: torch.Tensor | None = None,
        ref_rejected_logps: torch.Tensor | None = None,
        replay_seq: torch.Tensor | None = None,
        replay_prompt_len: torch.Tensor | None = None,
    ) -> StepOutput:
        """DPO loss and metrics for a batch of pairs.

        Args:
            chosen: (B, L) prompt + chosen response ids, right-padded with negative ids.
            rejected: (B, L) prompt + rejected response ids, right-padded with negative ids.
            prompt_len: (B,) prompt length shared by both rows of a pair.
            ref_chosen_logps: Optional precomputed (B,) reference log-probs of `chosen`.
            ref_rejected_logps: Optional precomputed (B,) reference log-probs of `rejected`.
            replay_seq: Optional (R, L') SFT sequences (prompt + response) whose token-mean NLL is
                added with `replay_weight` (`replay/nll` in the metrics).
            replay_prompt_len: (R,) prompt lengths of `replay_seq`.

        Returns:
            `StepOutput` with the mean loss over pairs and TRL-named metrics.
        """
        logps, mask = self._pair_logps(self.policy, chosen, rejected, prompt_len)
        policy_chosen, policy_rejected = REDUCTIONS[self.reduction](logps, mask).chunk(2)
        if ref_chosen_logps is None or ref_rejected_logps is None:
            ref_chosen_logps, ref_rejected_logps = self.ref_logps(chosen, rejected, prompt_len)
        out = preference_loss(
            policy_chosen,
            policy_rejected,
            ref_chosen_logps.to(policy_chosen),
            ref_rejected_logps.to(policy_rejected),
            loss_type=self.loss_type,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )
        loss = out.losses.mean()
        metrics = {
            "rewards/chosen": out.chosen_rewards.mean(),
            "rewards/rejected": out.rejected_rewards.mean(),
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().mean(),
            "rewards/margins": (out.chosen_rewards - out.rejected_rewards).mean(),
            "logps/chosen": policy_chosen.detach().mean(),
            "logps/rejected": policy_rejected.detach().mean(),
        }
        if self.nll_weight > 0:
            batch = chosen.shape[0]
            # token-level mean over the chosen responses of the whole batch
            nll = mean_token_nll(logps[:batch], mask[:batch])
            loss = loss + self.nll_weight * nll
            metrics["nll"] = nll.detach()
        # tokens of the chosen and rejected sequences, prompt counted in both however it was computed
        num_tokens = int((chosen >= 0).sum() + (rejected >= 0).sum())
        if replay_seq is not None:
            replay_logps, replay_mask, pad_mask = response_logprobs(
                self.policy, trim_right_padding(replay_seq), replay_prompt_len.to(replay_seq.device))
            replay_nll = mean_token_nll(replay_logps, replay_mask)
            loss = loss + self.replay_weight * replay_nll
            metrics["replay/nll"] = replay_nll.detach()
            num_tokens += int(pad_mask.sum())
        metrics["loss"] = loss.detach()
        return StepOutput(loss=loss, metrics=metrics, num_tokens=num_tokens)
