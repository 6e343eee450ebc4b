"""Real model configurations and a parameter counter (Lecture 02).

The numbers come from the models' papers and released config files (see
``REFERENCE`` notes in the README). :func:`count_parameters` counts every weight the
architecture defines, so its totals can be checked against the published figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention sizes (DeepSeek-V2 section 2.1; Lecture 02)."""

    kv_lora_rank: int  # d_c: width of the cached latent c_KV
    qk_nope_head_dim: int  # d_h: per-head query/key width without RoPE
    qk_rope_head_dim: int  # d_h^R: decoupled RoPE width (key shared by all heads)
    v_head_dim: int  # per-head value width
    q_lora_rank: int | None = None  # d_c': query latent width; None = plain W_Q


@dataclass(frozen=True)
class MoESpec:
    """DeepSeekMoE sizes (DeepSeek-V3 section 2.1.2; Lecture 02)."""

    n_routed_experts: int
    n_shared_experts: int
    n_activated_experts: int  # top-k routed experts per token
    expert_hidden: int  # moe_intermediate_size of one (fine-grained) expert
    first_k_dense: int  # the first k layers keep a dense FFN
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    scoring: str = "softmax"  # "softmax" (V2) or "sigmoid" (V3)
    gate_bias: bool = False  # V3's aux-loss-free routing bias (one per routed expert)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a published model, enough to count its parameters (Lecture 02)."""

    name: str
    released: str  # year-month of the paper or release
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    context_length: int
    d_ff: int  # hidden width of a dense feed-forward layer
    ffn: str = "gelu"  # "gelu": 2 matrices; "swiglu": 3 matrices (gate, up, down)
    n_kv_heads: int | None = None  # GQA groups; None means one K/V head per query head
    bias: bool = True  # biases in linear layers and norms (GPT-2/3) or none (Llama, DeepSeek)
    tied_embeddings: bool = True  # output head shares the token-embedding matrix
    learned_positions: bool = True  # GPT-style learned position table (RoPE models have none)
    mla: MLASpec | None = None
    moe: MoESpec | None = None
    published_total: float = 0.0  # billions, as the authors state it
    published_activated: float | None = None  # billions per token (MoE only)
    source: str = ""

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "context_length", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{self.name}: {name} must be positive, got {getattr(self, name)}.")
        if self.ffn not in ("gelu", "swiglu"):
            raise ValueError(f"{self.name}: ffn must be 'gelu' or 'swiglu', got {self.ffn!r}.")
        if self.mla is None and self.d_model % self.n_heads:
            raise ValueError(f"{self.name}: d_model {self.d_model} is not divisible by n_heads {self.n_heads}.")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"{self.name}: n_heads {self.n_heads} must be a multiple of n_kv_heads {kv}.")
        if self.moe and self.moe.n_activated_experts > self.moe.n_routed_experts:
            raise ValueError(f"{self.name}: top-k {self.moe.n_activated_experts} exceeds "
                             f"{self.moe.n_routed_experts} routed experts.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class ParameterCount:
    """Result of :func:`count_parameters`: totals and a breakdown by component (Lecture 02)."""

    total: int
    activated: int  # used per token: all but the input-embedding lookup and unchosen experts
    breakdown: dict[str, int] = field(default_factory=dict)


def _norm(spec: ModelSpec) -> int:
    return 2 * spec.d_model if spec.bias else spec.d_model  # LayerNorm has a bias, RMSNorm does not


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _ffn(spec: ModelSpec, hidden: int) -> int:
    d, b = spec.d_model, spec.bias
    if spec.ffn == "swiglu":
        return 2 * _linear(d, hidden, b) + _linear(hidden, d, b)
    return _linear(d, hidden, b) + _linear(hidden, d, b)


def _attention(spec: ModelSpec) -> int:
    d, h, b = spec.d_model, spec.n_heads, spec.bias
    m = spec.mla
    if m is None:  # MHA / GQA / MQA
        kv_width = (spec.n_kv_heads or h) * spec.head_dim
        return _linear(d, d, b) + 2 * _linear(d, kv_width, b) + _linear(d, d, b)
    qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
    if m.q_lora_rank:  # W_DQ, its RMSNorm, W_UQ
        q = d * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * h * qk_head
    else:
        q = d * h * qk_head
    kv = d * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank  # W_DKV + W_KR, latent RMSNorm
    kv += m.kv_lora_rank * h * (m.qk_nope_head_dim + m.v_head_dim)  # W_UK and W_UV
    return q + kv + h * m.v_head_dim * d  # ... + W_O


def count_parameters(spec: ModelSpec) -> ParameterCount:
    """Count total and activated parameters of ``spec`` (Lecture 02).

    Activated parameters are those a token's forward pass multiplies by: everything except the
    input-embedding lookup (unless tied to the output head) and the routed experts a token
    does not choose. DeepSeek-V3: 671.0B total, 36.6B activated (paper: 671B / 37B).
    """
    d, L = spec.d_model, spec.n_layers
    embedding = spec.vocab_size * d + (spec.context_length * d if spec.learned_positions else 0)
    head = 0 if spec.tied_embeddings else spec.vocab_size * d
    attention = L * _attention(spec)
    norms = (2 * L + 1) * _norm(spec)
    dense_layers = L if spec.moe is None else spec.moe.first_k_dense
    dense_ffn = dense_layers * _ffn(spec, spec.d_ff)
    experts = unused = router = 0
    if spec.moe is not None:
        moe, moe_layers = spec.moe, L - spec.moe.first_k_dense
        expert = _ffn(spec, moe.expert_hidden)
        experts = moe_layers * (moe.n_routed_experts + moe.n_shared_experts) * expert
        unused = moe_layers * (moe.n_routed_experts - moe.n_activated_experts) * expert
        router = moe_layers * moe.n_routed_experts * (d + (1 if moe.gate_bias else 0))
    total = embedding + head + attention + norms + dense_ffn + experts + router
    lookup = spec.vocab_size * d if not spec.tied_embeddings else 0
    lookup += spec.context_length * d if spec.learned_positions else 0
    breakdown = {"embedding": embedding, "attention": attention, "dense_ffn": dense_ffn,
                 "experts": experts, "router": router, "norms": norms, "output_head": head}
    return ParameterCount(total=total, activated=total - lookup - unused, breakdown=breakdown)


_DEEPSEEK_MLA = MLASpec(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("GPT-2 small", "2019-02", 50257, 768, 12, 12, 1024, 3072,
                  published_total=0.124, source="Radford et al. 2019; HF gpt2"),
        ModelSpec("GPT-2 medium", "2019-02", 50257, 1024, 24, 16, 1024, 4096,
                  published_total=0.355, source="Radford et al. 2019; HF gpt2-medium"),
        ModelSpec("GPT-3 175B", "2020-05", 50257, 12288, 96, 96, 2048, 49152,
                  published_total=175.0, source="Brown et al. 2020, Table 2.1"),
        ModelSpec("Llama-3-8B", "2024-04", 128256, 4096, 32, 32, 8192, 14336, ffn="swiglu",
                  n_kv_heads=8, bias=False, tied_embeddings=False, learned_positions=False,
                  published_total=8.0, source="Llama 3 herd paper, Table 3; HF config"),
        ModelSpec("Llama-3-70B", "2024-04", 128256, 8192, 80, 64, 8192, 28672, ffn="swiglu",
                  n_kv_heads=8, bias=False, tied_embeddings=False, learned_positions=False,
                  published_total=70.0, source="Llama 3 herd paper, Table 3; HF config"),
        ModelSpec("DeepSeek-V2-Lite", "2024-05", 102400, 2048, 27, 16, 32768, 10944, ffn="swiglu",
                  bias=False, tied_embeddings=False, learned_positions=False, mla=_DEEPSEEK_MLA,
                  moe=MoESpec(64, 2, 6, 1408, first_k_dense=1),
                  published_total=15.7, published_activated=2.4, source="DeepSeek-V2 appendix B"),
        ModelSpec("DeepSeek-V2", "2024-05", 102400, 5120, 60, 128, 131072, 12288, ffn="swiglu",
                  bias=False, tied_embeddings=False, learned_positions=False,
                  mla=MLASpec(512, 128, 64, 128, q_lora_rank=1536),
                  moe=MoESpec(160, 2, 6, 1536, first_k_dense=1, n_group=8, topk_group=3,
                              routed_scaling_factor=16.0),
                  published_total=236.0, published_activated=21.0, source="DeepSeek-V2 section 3.1.2"),
        ModelSpec("DeepSeek-V3", "2024-12", 129280, 7168, 61, 128, 131072, 18432, ffn="swiglu",
                  bias=False, tied_embeddings=False, learned_positions=False,
                  mla=MLASpec(512, 128, 64, 128, q_lora_rank=1536),
                  moe=MoESpec(256, 1, 8, 2048, first_k_dense=3, n_group=8, topk_group=4,
                              routed_scaling_factor=2.5, scoring="sigmoid", gate_bias=True),
                  published_total=671.0, published_activated=37.0, source="DeepSeek-V3 section 4.2"),
    ]
}


def get_config(name: str) -> ModelSpec:
    """Look up a model in :data:`MODELS` by name (Lecture 02)."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Available: {', '.join(MODELS)}.")
    return MODELS[name]
