"""DeepSeekMoE: fine-grained and shared experts, sigmoid gating, balancing without an auxiliary loss (Lecture 21).

DeepSeek changed the mixture-of-experts layer of lectures 18-20 in four ways:

- **fine-grained experts** (Dai et al. 2024, DeepSeekMoE): many small routed experts, more of them per
  token, at the same compute; far more expert combinations;
- **shared experts**: a few experts every token uses, for common knowledge;
- **sigmoid gating** (DeepSeek-V3, section 2.1.2): affinity ``s_i = sigmoid(u . e_i)``; the top-k are
  chosen on ``s_i + b_i``; the gate weights are the *unbiased* ``s_i`` of the chosen experts,
  normalised to sum 1 and multiplied by ``routed_scaling_factor``;
- **auxiliary-loss-free balancing** (Wang et al. 2024): after each step the correction bias moves
  ``b_i += gamma * sign(mean_load - load_i)``; it changes which experts are selected, never the gate
  weights. A tiny **sequence-wise balance loss** (``alpha = 0.0001``) guards single sequences.

**Group-limited routing** splits the experts into ``n_groups`` groups, scores each group by the sum of
its two largest biased affinities, keeps the best ``topk_groups`` groups and picks the top-k inside them.
Weight names and layout follow ``transformers``' ``DeepseekV3MoE``; :meth:`DeepSeekMoE.load_transformers_state_dict`
and :meth:`DeepSeekMoE.transformers_state_dict` convert between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from utils.moe.experts import SwiGLUExpert
from utils.moe.routing import SparseMoE, swiglu

__all__ = ["DeepSeekMoEConfig", "DeepSeekMoE", "group_limited_mask", "deepseek_gates", "bias_update",
           "max_violation", "sequence_balance_loss", "moe_layers", "update_moe_biases"]


@dataclass(frozen=True)
class DeepSeekMoEConfig:
    """Sizes and routing options of a :class:`DeepSeekMoE` layer (Lecture 21).

    ``expert_hidden`` is the hidden width of one routed expert (transformers' ``moe_intermediate_size``);
    the shared experts together have width ``n_shared * expert_hidden``. ``gamma`` is the bias update
    speed (0.001 in V3); ``seq_aux_alpha`` the weight of the sequence-wise balance loss (0.0001 in V3,
    0 switches it off).
    """

    d_model: int
    expert_hidden: int
    n_routed: int
    n_shared: int
    top_k: int
    n_groups: int = 1
    topk_groups: int = 1
    scoring: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    gamma: float = 0.001
    seq_aux_alpha: float = 0.0

    def __post_init__(self):
        if min(self.d_model, self.expert_hidden, self.n_routed) < 1 or self.n_shared < 0:
            raise ValueError(f"need d_model, expert_hidden, n_routed >= 1 and n_shared >= 0; got {self.d_model}, "
                             f"{self.expert_hidden}, {self.n_routed}, {self.n_shared}.")
        if self.scoring not in ("sigmoid", "softmax"):
            raise ValueError(f"scoring must be 'sigmoid' (DeepSeek-V3) or 'softmax' (V2), got {self.scoring!r}.")
        _check_groups(self.n_routed, self.top_k, self.n_groups, self.topk_groups)
        if self.gamma < 0 or self.seq_aux_alpha < 0:
            raise ValueError(f"gamma and seq_aux_alpha must be >= 0, got {self.gamma}, {self.seq_aux_alpha}.")


def _check_groups(n_experts: int, top_k: int, n_groups: int, topk_groups: int) -> None:
    if n_groups < 1 or n_experts % n_groups:
        raise ValueError(f"n_groups {n_groups} must divide the {n_experts} routed experts: choose n_groups "
                         f"among {[g for g in range(1, n_experts + 1) if n_experts % g == 0]}.")
    if not 1 <= topk_groups <= n_groups:
        raise ValueError(f"topk_groups {topk_groups} must be between 1 and n_groups {n_groups}.")
    left = topk_groups * (n_experts // n_groups)
    if not 1 <= top_k <= left:
        raise ValueError(f"top_k {top_k} exceeds the {left} experts left after group limiting "
                         f"({topk_groups} of {n_groups} groups of {n_experts // n_groups}): choose top_k <= {left}, "
                         "or keep more groups (topk_groups).")


def group_limited_mask(biased: torch.Tensor, n_groups: int, topk_groups: int) -> torch.Tensor:
    """Which experts stay selectable after group limiting (Lecture 21). biased (N, E) -> bool (N, E).

    Each group of ``E // n_groups`` consecutive experts is scored by the sum of its two largest biased
    affinities (one when a group has a single expert); the best ``topk_groups`` groups are kept.
    """
    N, E = biased.shape
    grouped = biased.view(N, n_groups, E // n_groups)  # (N, G, E/G)
    group_scores = grouped.topk(min(2, E // n_groups), dim=-1).values.sum(-1)  # (N, G)
    keep = group_scores.topk(topk_groups, dim=-1).indices  # (N, topk_groups)
    mask = torch.zeros(N, n_groups, dtype=torch.bool, device=biased.device).scatter(1, keep, True)
    return mask.unsqueeze(-1).expand_as(grouped).reshape(N, E)


def deepseek_gates(scores: torch.Tensor, bias: torch.Tensor, top_k: int, n_groups: int = 1, topk_groups: int = 1,
                   norm_topk_prob: bool = True, routed_scaling_factor: float = 1.0):
    """DeepSeek-V3's routing (Lecture 21): select on ``scores + bias``, weigh with the unbiased ``scores``.

    scores (N, E) affinities (sigmoid or softmax), bias (E,) -> weights (N, k), indices (N, k).
    """
    _check_groups(scores.shape[-1], top_k, n_groups, topk_groups)
    biased = scores + bias  # (N, E), used for the choice only
    if n_groups > 1:
        biased = biased.masked_fill(~group_limited_mask(biased, n_groups, topk_groups), float("-inf"))
    indices = biased.topk(top_k, dim=-1).indices  # (N, k)
    weights = scores.gather(-1, indices)  # (N, k) unbiased affinities of the chosen experts
    if norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return (weights if routed_scaling_factor == 1.0 else weights * routed_scaling_factor), indices


def bias_update(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """Wang et al. 2024's update (Lecture 21): ``b_i + gamma * sign(mean(load) - load_i)``.

    Overloaded experts (load above the mean) go down by gamma, underloaded ones up; an expert exactly
    at the mean keeps its bias. bias, load (E,) -> new bias (E,).
    """
    load = load.to(bias.dtype)
    return bias + gamma * torch.sign(load.mean() - load)


def max_violation(load: torch.Tensor) -> float:
    """MaxVio = max_i load_i / mean load - 1 (Wang et al. 2024); 0 when perfectly balanced (Lecture 21)."""
    load = load.float()
    return float(load.max() / load.mean() - 1)


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, top_k: int, alpha: float) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss (Lecture 21), averaged over the sequences of a batch.

    scores (B, T, E) affinities, indices (B, T, k) chosen experts -> scalar
    ``alpha * sum_i f_i P_i`` with ``f_i = E / (k T) * (tokens of the sequence sent to i)`` and
    ``P_i = mean_t s_{i,t} / sum_j s_{j,t}``. Equals alpha when every expert gets its share.
    """
    if scores.dim() != 3 or indices.shape[:2] != scores.shape[:2]:
        raise ValueError(f"need scores (B, T, E) and indices (B, T, k), got {tuple(scores.shape)} and "
                         f"{tuple(indices.shape)}: pass one row per sequence.")
    B, T, E = scores.shape
    counts = torch.zeros(B, E, dtype=scores.dtype, device=scores.device)
    counts.scatter_add_(1, indices.reshape(B, -1), torch.ones_like(indices.reshape(B, -1), dtype=scores.dtype))
    f = counts * E / (top_k * T)  # (B, E), no gradient
    P = (scores / scores.sum(-1, keepdim=True)).mean(1)  # (B, E)
    return alpha * (f * P).sum(-1).mean()


class DeepSeekMoE(SparseMoE):
    """DeepSeek-V3's MoE layer (Lecture 21): shared experts + fine-grained routed experts.

    forward: x (..., d_model) -> (..., d_model) = shared(x) + sum_j g_j expert_{i_j}(x). The routed
    experts run through :meth:`SparseMoE.forward_batched` (or ``forward_loop``; a single token, as in decoding,
    through :meth:`SparseMoE.forward_one`). After a forward:
    ``last_indices`` (N, k), ``last_load`` (E,) tokens per expert, ``step_load`` (E,) summed over training batches since the
    last :meth:`update_bias`, and ``aux_loss`` (the sequence-wise loss, 0 when ``seq_aux_alpha`` is 0 or
    in eval mode). The correction bias is a buffer (no gradient); call :meth:`update_bias` after each
    optimiser step.
    """

    def __init__(self, cfg: DeepSeekMoEConfig, dispatch: str = "batched"):
        nn.Module.__init__(self)
        if dispatch not in ("batched", "loop"):
            raise ValueError(f"dispatch must be 'batched' or 'loop', got {dispatch!r}.")
        self.cfg, self.dispatch = cfg, dispatch
        self.d_model, self.n_experts, self.top_k = cfg.d_model, cfg.n_routed, cfg.top_k
        self.gate = nn.Linear(cfg.d_model, cfg.n_routed, bias=False)  # (E, d), transformers' mlp.gate.weight
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed))
        self.experts = nn.ModuleList(SwiGLUExpert(cfg.d_model, cfg.expert_hidden) for _ in range(cfg.n_routed))
        # n_shared experts of width I == one SwiGLU of width n_shared * I (their hidden units side by side)
        self.shared_experts = SwiGLUExpert(cfg.d_model, cfg.n_shared * cfg.expert_hidden) if cfg.n_shared else None
        self.last_indices: torch.Tensor | None = None
        self.last_load = torch.zeros(cfg.n_routed)
        self.step_load = torch.zeros(cfg.n_routed)
        self.aux_loss = torch.tensor(0.0)
        self._zero_aux = self.aux_loss

    @property
    def last_load(self) -> torch.Tensor:
        """(E,) tokens per expert in the last forward (on the CPU, float). Counted when first read after an
        eval-mode forward (decoding never pays for it); at once in training, where ``step_load`` needs it."""
        if self._last_load is None:
            self._last_load = torch.bincount(self.last_indices.reshape(-1), minlength=self.n_experts).float().cpu()
        return self._last_load

    @last_load.setter
    def last_load(self, value: torch.Tensor) -> None:
        self._last_load = value

    @classmethod
    def factory(cls, dispatch: str = "batched", **options) -> Callable:
        """``feed_forward=DeepSeekMoE.factory(expert_hidden=32, n_routed=8, n_shared=1, top_k=2)`` for
        :class:`utils.gpt.GPTModel`; ``d_model`` comes from the GPT config."""
        return lambda cfg: cls(DeepSeekMoEConfig(d_model=cfg.d_model, **options), dispatch)

    def affinities(self, flat: torch.Tensor) -> torch.Tensor:
        """flat (N, d) -> s (N, E): sigmoid (V3) or softmax (V2) of the router logits, in fp32."""
        w = self.gate.weight
        logits = nn.functional.linear(flat if flat.dtype == torch.float32 else flat.float(),
                                      w if w.dtype == torch.float32 else w.float())
        return logits.sigmoid() if self.cfg.scoring == "sigmoid" else logits.softmax(-1)

    def route(self, flat: torch.Tensor):
        """flat (N, d) -> weights (N, k), indices (N, k), scores (N, E)."""
        c = self.cfg
        scores = self.affinities(flat)
        weights, indices = deepseek_gates(scores, self.e_score_correction_bias, c.top_k, c.n_groups,
                                          c.topk_groups, c.norm_topk_prob, c.routed_scaling_factor)
        return weights, indices, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, d)
        weights, indices, scores = self.route(flat)
        self.last_indices, self._last_load = indices, None  # (ids: no gradient); eval: last_load counted when read
        if self.training:  # only training batches count towards the next bias update
            self.step_load = self.step_load + self.last_load
        if self.training and self.cfg.seq_aux_alpha > 0 and x.dim() == 3:
            self.aux_loss = sequence_balance_loss(scores.view(*shape[:2], -1), indices.view(*shape[:2], -1),
                                                  self.top_k, self.cfg.seq_aux_alpha)
        else:  # one zero per dtype and device, reused (no new tensor per decoding step)
            zero = self._zero_aux
            if zero.dtype != scores.dtype or zero.device != scores.device:
                zero = self._zero_aux = scores.new_zeros(())
            self.aux_loss = zero
        if weights.dtype != flat.dtype:
            weights = weights.to(flat.dtype)
        if flat.shape[0] == 1:  # one token (decoding): call its k experts in turn, no sort or scatter
            out = self.forward_one(flat, weights, indices)
            if self.shared_experts is not None:
                out = out + swiglu(self.shared_experts, flat)
            return out.reshape(shape)
        run = self.forward_loop if self.dispatch == "loop" else self.forward_batched
        out = run(flat, weights, indices)  # (N, d)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.reshape(shape)

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor | None = None) -> torch.Tensor:
        """``b += gamma * sign(mean load - load)`` with the load seen since the last update (or ``load``);
        resets ``step_load`` and returns the new bias (E,). Gate weights are untouched."""
        load = self.step_load if load is None else load
        new = bias_update(self.e_score_correction_bias, load.to(self.e_score_correction_bias.device),
                          self.cfg.gamma)
        self.e_score_correction_bias.copy_(new)
        self.step_load = torch.zeros(self.n_experts)
        return new

    # --- transformers' DeepseekV3MoE layout ----------------------------------------------------------------

    def transformers_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under transformers' names (keys of ``DeepseekV3MoE.state_dict()``)."""
        sd = {"gate.weight": self.gate.weight.detach().clone(),
              "gate.e_score_correction_bias": self.e_score_correction_bias.clone(),
              "experts.gate_up_proj": torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight])
                                                   for e in self.experts]).detach(),  # (E, 2I, d), gate first
              "experts.down_proj": torch.stack([e.down_proj.weight for e in self.experts]).detach()}  # (E, d, I)
        if self.shared_experts is not None:
            for name in ("gate_proj", "up_proj", "down_proj"):
                sd[f"shared_experts.{name}.weight"] = getattr(self.shared_experts, name).weight.detach().clone()
        return sd

    @torch.no_grad()
    def load_transformers_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a ``DeepseekV3MoE.state_dict()`` (prefix ``mlp.`` stripped); every key must be there and fit."""
        want = self.transformers_state_dict()
        missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
        if missing or extra:
            raise ValueError(f"state dict does not fit this DeepSeekMoE: missing {missing}, unexpected {extra}; "
                             "strip the 'mlp.' prefix and check n_shared.")
        for key, ours in want.items():
            if tuple(sd[key].shape) != tuple(ours.shape):
                raise ValueError(f"{key}: shape {tuple(sd[key].shape)} does not fit {tuple(ours.shape)}; "
                                 "check d_model, expert_hidden, n_routed and n_shared.")
        self.gate.weight.copy_(sd["gate.weight"])
        self.e_score_correction_bias.copy_(sd["gate.e_score_correction_bias"])
        I = self.cfg.expert_hidden
        for e, expert in enumerate(self.experts):
            expert.gate_proj.weight.copy_(sd["experts.gate_up_proj"][e, :I])
            expert.up_proj.weight.copy_(sd["experts.gate_up_proj"][e, I:])
            expert.down_proj.weight.copy_(sd["experts.down_proj"][e])
        if self.shared_experts is not None:
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(self.shared_experts, name).weight.copy_(sd[f"shared_experts.{name}.weight"])

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"routed={c.n_routed}, shared={c.n_shared}, top_k={c.top_k}, groups={c.topk_groups}/{c.n_groups}, "
                f"scoring={c.scoring}, scale={c.routed_scaling_factor}")



# --- glue for training a GPT with MoE layers (Lecture 22) -------------------------------------------------

def moe_layers(model: nn.Module, kind: type = SparseMoE) -> list[nn.Module]:
    """The MoE layers of ``model`` (modules that are instances of ``kind``), in order (Lecture 22)."""
    return [m for m in model.modules() if isinstance(m, kind)]


def update_moe_biases(step: int, model: nn.Module, history=None) -> None:
    """A :class:`utils.trainer.Trainer` hook (Lecture 22): after every optimiser step, apply Wang et al.'s
    bias update (:meth:`DeepSeekMoE.update_bias`) to every DeepSeekMoE layer of ``model``, each with the
    load it saw since its last update."""
    for layer in moe_layers(model, DeepSeekMoE):
        layer.update_bias()
