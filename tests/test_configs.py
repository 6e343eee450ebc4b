import dataclasses

import pytest
import torch

from utils.configs import MODELS, ModelSpec, MoESpec, _attention, _ffn, count_parameters, get_config
from utils.gpt import GPTConfig, GPTModel

# (total, activated counting the input embedding) in billions from REFERENCE.md: parameter
# counts of the official model code, an independent count.
EXACT = {"DeepSeek-V3": (671.03, 37.55), "DeepSeek-V2": (235.74, 21.38), "DeepSeek-V2-Lite": (15.71, 2.66)}


@pytest.mark.parametrize("name", list(MODELS))
def test_totals_match_published_within_half_percent(name):
    spec = MODELS[name]
    total = count_parameters(spec).total / 1e9
    # GPT-3's "175B" and Llama's "8B"/"70B" are rounded names; allow their rounding.
    tol = 0.005 if spec.moe or name.startswith("GPT-2") else 0.01
    assert abs(total / spec.published_total - 1) < tol, total


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.moe])
def test_activated_match_published_within_three_percent(name):
    spec = MODELS[name]
    activated = count_parameters(spec).activated / 1e9
    assert abs(activated / spec.published_activated - 1) < 0.03, activated
    with_embedding = activated + spec.vocab_size * spec.d_model / 1e9
    assert with_embedding == pytest.approx(EXACT[name][1], abs=0.006)
    assert count_parameters(spec).total / 1e9 == pytest.approx(EXACT[name][0], abs=0.006)


def test_exact_dense_counts():
    assert count_parameters(MODELS["GPT-2 small"]).total == 124_439_808
    assert count_parameters(MODELS["GPT-2 medium"]).total == 354_823_168
    assert count_parameters(MODELS["Llama-3-8B"]).total == 8_030_261_248  # HF model card
    assert count_parameters(MODELS["Llama-3-70B"]).total == 70_553_706_496


def test_v3_layer_facts():
    """REFERENCE.md: MLA 187.1M per layer; one MoE decoder layer 11.507B total, 0.585B activated."""
    v3 = MODELS["DeepSeek-V3"]
    mla = _attention(v3)
    assert mla / 1e6 == pytest.approx(187.1, abs=0.05)
    moe, d = v3.moe, v3.d_model
    shared_part = mla + 2 * d + moe.n_routed_experts * (d + 1)  # attention, 2 RMSNorms, router + bias
    expert = _ffn(v3, moe.expert_hidden)
    total = shared_part + (moe.n_routed_experts + moe.n_shared_experts) * expert
    activated = shared_part + (moe.n_activated_experts + moe.n_shared_experts) * expert
    assert total / 1e9 == pytest.approx(11.507, abs=0.0005)
    assert activated / 1e9 == pytest.approx(0.585, abs=0.0005)


def test_breakdown_sums_to_total():
    for spec in MODELS.values():
        count = count_parameters(spec)
        assert sum(count.breakdown.values()) == count.total


def test_gpt_model_matches_counter():
    with torch.device("meta"):
        model = GPTModel(GPTConfig.gpt2_small())
    assert sum(p.numel() for p in model.parameters()) == count_parameters(MODELS["GPT-2 small"]).total


def test_get_config_unknown_lists_names():
    with pytest.raises(ValueError, match="DeepSeek-V3"):
        get_config("GPT-5")


@pytest.mark.parametrize("change, message", [
    (dict(n_heads=7), "divisible"),
    (dict(d_model=0), "positive"),
    (dict(ffn="relu"), "swiglu"),
    (dict(n_kv_heads=5), "multiple"),
])
def test_invalid_spec_raises(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(MODELS["GPT-2 small"], **change)


def test_top_k_larger_than_experts_raises():
    with pytest.raises(ValueError, match="top-k"):
        dataclasses.replace(MODELS["DeepSeek-V3"], moe=MoESpec(8, 1, 9, 64, 1))
