"""Lecture 29's checkers accept the right answers and reject the wrong answers learners write."""

import torch
from torch import nn

from checker_tools import assert_accepts, assert_rejects
from utils.mla_rope import DeepSeekMLA
from utils.model import DeepSeekBlock
from utils.moe import DeepSeekMoE
from utils.moe.experts import SwiGLUExpert

# --- 29.1: one DeepSeek decoder block -------------------------------------------------------------


class RightBlock(nn.Module):
    def __init__(self, cfg, layer_index):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.self_attn = DeepSeekMLA(cfg.mla_config())
        self.post_attention_layernorm = nn.RMSNorm(cfg.d_model, eps=cfg.eps)
        moe = layer_index >= cfg.first_k_dense
        self.mlp = DeepSeekMoE(cfg.moe_config()) if moe else SwiGLUExpert(cfg.d_model, cfg.d_ff)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


def with_forward(forward):
    return type("Wrong", (RightBlock,), {"forward": forward})


def test_29_1_accepts():
    assert_accepts("29.1", RightBlock)

    class ViaUtils(DeepSeekBlock):  # the utils block itself (with its unused dropout) passes too
        pass

    assert_accepts("29.1", ViaUtils)


def test_29_1_rejects_post_norm():
    def post_norm(self, x):  # the original Transformer's order: norm after the residual sum
        x = self.input_layernorm(x + self.self_attn(x))
        return self.post_attention_layernorm(x + self.mlp(x))

    assert_rejects("29.1", with_forward(post_norm), "is wrong")


def test_29_1_rejects_missing_residual():
    def no_attention_residual(self, x):
        x = self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))

    def no_ffn_residual(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return self.mlp(self.post_attention_layernorm(x))

    assert_rejects("29.1", with_forward(no_attention_residual), "is wrong")
    assert_rejects("29.1", with_forward(no_ffn_residual), "is wrong")


def test_29_1_rejects_norm_after_the_residual():
    def normed_stream(self, x):  # the residual stream itself is replaced by its normalised version
        x = self.input_layernorm(x)
        x = x + self.self_attn(x)
        x = self.post_attention_layernorm(x)
        return x + self.mlp(x)

    def final_norm_inside(self, x):  # a norm on the block's output, as if it were the model's final norm
        x = x + self.self_attn(self.input_layernorm(x))
        x = x + self.mlp(self.post_attention_layernorm(x))
        return self.post_attention_layernorm(x)

    assert_rejects("29.1", with_forward(normed_stream), "is wrong")
    assert_rejects("29.1", with_forward(final_norm_inside), "is wrong")


def test_29_1_rejects_one_norm_twice_and_parallel_branches():
    def same_norm(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.input_layernorm(x))

    def parallel(self, x):  # GPT-J's parallel block: FFN reads the input, not the attention's output
        return x + self.self_attn(self.input_layernorm(x)) + self.mlp(self.post_attention_layernorm(x))

    assert_rejects("29.1", with_forward(same_norm), "is wrong")
    assert_rejects("29.1", with_forward(parallel), "is wrong")


def test_29_1_rejects_wrong_ffn_kind():
    class AlwaysDense(RightBlock):
        def __init__(self, cfg, layer_index):
            super().__init__(cfg, layer_index)
            self.mlp = SwiGLUExpert(cfg.d_model, cfg.d_ff)

    class MoEFromLayerOne(RightBlock):  # off by one: first_k_dense layers are 0 ... first_k_dense - 1
        def __init__(self, cfg, layer_index):
            super().__init__(cfg, layer_index)
            moe = layer_index > cfg.first_k_dense
            self.mlp = DeepSeekMoE(cfg.moe_config()) if moe else SwiGLUExpert(cfg.d_model, cfg.d_ff)

    assert_rejects("29.1", AlwaysDense, "KeyError")
    assert_rejects("29.1", MoEFromLayerOne, "KeyError")


# --- 29.2: total and activated parameters ---------------------------------------------------------


def _parts(cfg):
    d, H = cfg.d_model, cfg.n_heads
    qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    if cfg.q_lora_rank:
        q = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * H * qk
    else:
        q = d * H * qk
    mla = (q + d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank
           + cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + cfg.v_head_dim) + H * cfg.v_head_dim * d)
    expert = 3 * d * cfg.expert_hidden
    gate = cfg.n_routed * d + (cfg.n_routed if cfg.scoring == "sigmoid" else 0)  # + the correction bias
    return dict(d=d, mla=mla, norms=2 * d, dense=3 * d * cfg.d_ff, expert=expert, shared=cfg.n_shared * expert,
                gate=gate, n_moe=cfg.n_layers - cfg.first_k_dense,
                lookup=cfg.vocab_size * d, head=0 if cfg.tie_embeddings else cfg.vocab_size * d)


def count(cfg, routed_active=None, shared=True, embedding_in_activated=True, mtp=False):
    p = _parts(cfg)
    active = cfg.top_k if routed_active is None else routed_active(cfg)
    shared_p = p["shared"] if shared else 0
    trunk = p["lookup"] + p["head"] + p["d"] + cfg.n_layers * (p["mla"] + p["norms"]) + cfg.first_k_dense * p["dense"]
    total = trunk + p["n_moe"] * (cfg.n_routed * p["expert"] + shared_p + p["gate"])
    activated = trunk + p["n_moe"] * (active * p["expert"] + shared_p + p["gate"])
    if not embedding_in_activated:
        activated -= p["lookup"]
    if mtp:  # MTP module: hnorm, enorm, eh_proj, one MoE block, shared_head.norm
        module = 3 * p["d"] + 2 * p["d"] ** 2 + p["mla"] + p["norms"]
        total += cfg.mtp_depth * (module + cfg.n_routed * p["expert"] + shared_p + p["gate"])
        activated += cfg.mtp_depth * (module + active * p["expert"] + shared_p + p["gate"])
    return total, activated


def test_29_2_accepts():
    assert_accepts("29.2", count)


def test_29_2_rejects_all_experts_activated():
    assert_rejects("29.2", lambda cfg: count(cfg, routed_active=lambda c: c.n_routed), "is wrong")


def test_29_2_rejects_forgotten_shared_expert():
    assert_rejects("29.2", lambda cfg: count(cfg, shared=False), "is wrong")


def test_29_2_rejects_mtp_module_in_the_main_model():
    assert_rejects("29.2", lambda cfg: count(cfg, mtp=True), "is wrong")


def test_29_2_rejects_embedding_not_activated_and_floats():
    assert_rejects("29.2", lambda cfg: count(cfg, embedding_in_activated=False), "is wrong")
    assert_rejects("29.2", lambda cfg: tuple(float(n) for n in count(cfg)))


# --- 29.3: latent-cache bytes ---------------------------------------------------------------------


def right_cache(cfg, n_tokens, bytes_per_number):
    return n_tokens * cfg.n_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * bytes_per_number


def test_29_3_accepts():
    assert_accepts("29.3", right_cache)


def test_29_3_rejects_full_keys_and_values():
    def full_kv(cfg, n_tokens, bytes_per_number):  # MHA's cache: every head's key and value
        per_head = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim
        return n_tokens * cfg.n_layers * cfg.n_heads * per_head * bytes_per_number

    assert_rejects("29.3", full_kv, "is wrong")


def test_29_3_rejects_missing_rope_key_and_per_head_latent():
    def latent_only(cfg, n_tokens, bytes_per_number):
        return n_tokens * cfg.n_layers * cfg.kv_lora_rank * bytes_per_number

    def per_head(cfg, n_tokens, bytes_per_number):
        return right_cache(cfg, n_tokens, bytes_per_number) * cfg.n_heads

    assert_rejects("29.3", latent_only, "is wrong")
    assert_rejects("29.3", per_head, "is wrong")


def test_29_3_rejects_mtp_layer_and_floats():
    def with_mtp(cfg, n_tokens, bytes_per_number):  # the MTP block is not run by plain generation
        return right_cache(cfg, n_tokens, bytes_per_number) // cfg.n_layers * (cfg.n_layers + cfg.mtp_depth)

    assert_rejects("29.3", with_mtp, "is wrong")
    assert_rejects("29.3", lambda cfg, n, b: float(right_cache(cfg, n, b)))
