"""Exercises of Lecture 02: counting parameters by hand.

Every expected value is computed by :func:`utils.configs.count_parameters` on a
:class:`~utils.configs.ModelSpec` built from the exercise's arguments.
"""

from __future__ import annotations

from utils.configs import MLASpec, ModelSpec, MoESpec, count_parameters
from utils.exercises import Case, exercise


def _gpt2_style(vocab: int, d_model: int, n_layers: int, context: int, tied: bool) -> int:
    spec = ModelSpec("exercise 02.1", "2019-02", vocab, d_model, n_layers, n_heads=1,
                     context_length=context, d_ff=4 * d_model, tied_embeddings=tied)
    return count_parameters(spec).total


@exercise("02.1", "parameters of a GPT-2-style model", atol=0)
def _cases_gpt2_style():
    settings = {
        "GPT-2 small, tied head (124,439,808)": (50257, 768, 12, 1024, True),
        "GPT-2 medium, tied head": (50257, 1024, 24, 1024, True),
        "GPT-2 XL, tied head": (50257, 1600, 48, 1024, True),
        "GPT-2 small with a separate output head": (50257, 768, 12, 1024, False),
        "toy model: V 100, d 16, L 2, context 8, untied": (100, 16, 2, 8, False),
    }
    return [Case(label, s, _gpt2_style(*s)) for label, s in settings.items()]


def _moe_sublayer(d: int, expert_hidden: int, n_routed: int, n_shared: int, top_k: int,
                  swiglu: bool) -> tuple[int, int]:
    """(total, activated) of one MoE feed-forward sublayer (experts + bias-free router)."""
    vocab = 10
    spec = ModelSpec("exercise 02.2", "2024-01", vocab, d, n_layers=1, n_heads=1, context_length=1,
                     d_ff=1, ffn="swiglu" if swiglu else "gelu", bias=False, tied_embeddings=False,
                     learned_positions=False,
                     moe=MoESpec(n_routed, n_shared, top_k, expert_hidden, first_k_dense=0))
    count = count_parameters(spec)
    total = count.breakdown["experts"] + count.breakdown["router"]
    unchosen = count.total - count.activated - vocab * d  # total - activated = lookup + unchosen experts
    return total, total - unchosen


@exercise("02.2", "total and activated parameters of one MoE layer", atol=0)
def _cases_moe_layer():
    settings = {
        "DeepSeek-V3: 256 routed + 1 shared, top-8": (7168, 2048, 256, 1, 8, True),
        "DeepSeek-V2: 160 routed + 2 shared, top-6": (5120, 1536, 160, 2, 6, True),
        "DeepSeek-V2-Lite: 64 routed + 2 shared, top-6": (2048, 1408, 64, 2, 6, True),
        "Mixtral-8x7B-sized: no shared expert, top-2": (4096, 14336, 8, 0, 2, True),
        "Switch-style: GELU experts (2 matrices), top-1": (768, 3072, 8, 0, 1, False),
    }
    return [Case(label, s, _moe_sublayer(*s)) for label, s in settings.items()]


def _mla_layer(d: int, n_heads: int, q_lora_rank: int | None, kv_lora_rank: int, qk_nope: int,
               qk_rope: int, v_head: int) -> int:
    spec = ModelSpec("exercise 02.3", "2024-05", vocab_size=10, d_model=d, n_layers=1, n_heads=n_heads,
                     context_length=1, d_ff=1, ffn="swiglu", bias=False, tied_embeddings=False,
                     learned_positions=False,
                     mla=MLASpec(kv_lora_rank, qk_nope, qk_rope, v_head, q_lora_rank=q_lora_rank))
    return count_parameters(spec).breakdown["attention"]


@exercise("02.3", "parameters of one MLA layer", atol=0)
def _cases_mla_layer():
    settings = {
        "DeepSeek-V3 (187.1M)": (7168, 128, 1536, 512, 128, 64, 128),
        "DeepSeek-V2": (5120, 128, 1536, 512, 128, 64, 128),
        "DeepSeek-V2-Lite: q_lora_rank None, a plain W_Q": (2048, 16, None, 512, 128, 64, 128),
        "toy layer: every width different (v_head != qk_nope)": (8, 2, 6, 4, 3, 2, 5),
    }
    return [Case(label, s, _mla_layer(*s)) for label, s in settings.items()]
