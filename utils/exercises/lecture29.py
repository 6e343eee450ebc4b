"""Exercises of Lecture 29: the mini DeepSeek assembled.

29.1 one DeepSeek decoder block from the ``utils`` parts (RMSNorm, DeepSeekMLA, SwiGLUExpert or
     DeepSeekMoE, two pre-norm residuals), checked against :class:`utils.model.DeepSeekBlock` with the
     same weights (the learner writes a class; :func:`utils.exercises.run_module`),
29.2 total and activated parameters of a config's main model (embedding counted in both, MTP modules
     not counted), a tuple of two ints,
29.3 latent-cache bytes for ``n_tokens`` tokens over all layers of the main model, an int.
Expected values come from :mod:`utils.model`; weights and inputs come from private generators.
"""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise, module_case, run_module
from utils.model import DeepSeekBlock, DeepSeekConfig, count_parameters


def _block_case(label: str, cfg: DeepSeekConfig, layer_index: int, B: int, T: int, seed: int) -> Case:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        block = DeepSeekBlock(cfg, layer_index).eval()
        with torch.no_grad():  # norms far from 1 and a non-zero routing bias, so a skipped part shows
            for name, p in block.named_parameters():
                if "norm" in name:
                    p.uniform_(0.5, 1.5)
            for name, b in block.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.uniform_(-0.05, 0.05)
    x = 3.0 * torch.randn(B, T, cfg.d_model, generator=torch.Generator().manual_seed(seed + 1))
    return module_case(label, block, (cfg, layer_index), (x,))


@exercise("29.1", "one DeepSeek decoder block: x + MLA(RMSNorm(x)), then + FFN(RMSNorm(x)), a class",
          atol=1e-5, call=run_module)
def _cases_block():
    tiny = DeepSeekConfig.tiny()
    return [
        _block_case("layer 0 of the tiny model: dense SwiGLU FFN", tiny, 0, 1, 6, 2901),
        _block_case("layer 1 of the tiny model: DeepSeekMoE (8 routed top-2 + 1 shared)", tiny, 1, 2, 5, 2902),
        _block_case("no query compression (q_lora_rank None), 2 shared experts, 4 groups",
                    DeepSeekConfig.tiny(q_lora_rank=None, n_shared=2, n_groups=4, topk_groups=2), 2, 2, 7, 2903),
        _block_case("first_k_dense = 2: layer 1 is dense", DeepSeekConfig.tiny(first_k_dense=2), 1, 1, 4, 2904),
    ]


def _configs() -> list[tuple[str, DeepSeekConfig]]:
    return [
        ("the tiny model (32 wide, 3 layers, 8 experts top-2 + 1 shared, MTP 1)", DeepSeekConfig.tiny()),
        ("the small model of lectures 29-30 (vocabulary 1000)", DeepSeekConfig.small(vocab_size=1000)),
        ("tied embedding and head, 2 shared experts", DeepSeekConfig.tiny(tie_embeddings=True, n_shared=2)),
        ("DeepSeek-V2-Lite: softmax router (no correction bias), no query compression", DeepSeekConfig.v2_lite()),
        ("DeepSeek-V3: 671B total, 37.6B activated", DeepSeekConfig.v3()),
    ]


@exercise("29.2", "total and activated parameters of the main model (embedding counted, MTP not): (int, int)")
def _cases_count():
    cases = []
    for label, cfg in _configs():
        count = count_parameters(cfg)
        cases.append(Case(label, (cfg,), (count.total, count.activated)))
    return cases


@exercise("29.3", "latent-cache bytes for n_tokens tokens over all main layers, an int")
def _cases_cache():
    cases = []
    for (label, cfg), n_tokens, dtype, size in zip(
            _configs(), (32, 256, 10, 4096, 1), (torch.float32, torch.float32, torch.bfloat16,
                                                  torch.bfloat16, torch.bfloat16), (4, 4, 2, 2, 2)):
        expected = n_tokens * cfg.cache_bytes_per_token(dtype, per_layer=False)
        cases.append(Case(f"{label}; {n_tokens} tokens, {size} bytes per number", (cfg, n_tokens, size), expected))
    return cases
