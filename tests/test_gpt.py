import pytest
import torch
from torch import nn

from utils.attention import MultiHeadAttention
from utils.gpt import FeedForward, GPTConfig, GPTModel

TINY = GPTConfig(vocab_size=50, context_length=16, d_model=32, n_heads=4, n_layers=2, dropout=0.0)


def test_forward_shape_and_default_attention():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    logits = model(torch.randint(0, 50, (3, 10)))
    assert logits.shape == (3, 10, 50)
    assert isinstance(model.blocks[0].attn, MultiHeadAttention) and isinstance(model.blocks[0].ff, FeedForward)


def test_pluggable_modules_are_used():
    class Zero(nn.Module):
        def __init__(self, cfg):
            super().__init__()

        def forward(self, x):
            return torch.zeros_like(x)

    model = GPTModel(TINY, attention=Zero, feed_forward=Zero).eval()
    idx = torch.randint(0, 50, (1, 5))
    expected = model.out_head(model.final_norm(model.tok_emb(idx) + model.pos_emb(torch.arange(5))))
    torch.testing.assert_close(model(idx), expected)


def test_sdpa_option_gives_same_logits():
    torch.manual_seed(0)
    explicit = GPTModel(TINY).eval()
    fused = GPTModel(GPTConfig(**{**TINY.__dict__, "use_sdpa": True})).eval()
    fused.load_state_dict(explicit.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(explicit(idx), fused(idx), atol=1e-5, rtol=1e-5)


def test_causal_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    torch.testing.assert_close(model(idx)[:, :8], model(changed)[:, :8])


def test_weight_tying_shares_one_matrix():
    tied = GPTModel(GPTConfig(**{**TINY.__dict__, "tie_embeddings": True}))
    assert tied.out_head.weight is tied.tok_emb.weight
    untied = GPTModel(TINY)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(untied) - n(tied) == 50 * 32


def test_gpt2_small_has_124_439_808_parameters():
    with torch.device("meta"):
        model = GPTModel(GPTConfig.gpt2_small())
    assert sum(p.numel() for p in model.parameters()) == 124_439_808


@pytest.mark.parametrize("change, message", [
    (dict(d_model=100, n_heads=3), "not divisible by n_heads"),
    (dict(n_layers=0), "n_layers must be positive"),
    (dict(vocab_size=-1), "vocab_size must be positive"),
    (dict(dropout=1.0), "dropout"),
    (dict(d_ff=0), "d_ff"),
])
def test_invalid_config_says_what_to_change(change, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY.__dict__, **change})


def test_bad_inputs_raise():
    model = GPTModel(TINY)
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="LongTensor"):
        model(torch.zeros(5, dtype=torch.long))


def test_attention_weights_per_block_are_causal_and_match_the_forward_pass():
    from utils.gpt import attention_weights
    torch.manual_seed(0)
    model = GPTModel(TINY)
    idx = torch.randint(0, 50, (2, 9))
    weights = attention_weights(model, idx)
    assert len(weights) == 2 and weights[0].shape == (2, 4, 9, 9) and model.training
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(2, 4, 9))
    assert weights[0].triu(1).abs().max() == 0
    # block 0 sees the embeddings directly: recompute its weights from the attention module itself
    x = model.blocks[0].norm1(model.tok_emb(idx) + model.pos_emb(torch.arange(9)))
    model.eval()
    torch.testing.assert_close(weights[0], model.blocks[0].attn(x, return_weights=True)[1])


def test_init_follows_gpt2_with_scaled_residual_projections():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=500, context_length=64, d_model=256, n_heads=4, n_layers=8)
    model = GPTModel(cfg)
    scaled = 0.02 / (2 * cfg.n_layers) ** 0.5
    for name, param in model.named_parameters():
        if name.endswith(("attn.out_proj.weight", "ff.net.2.weight")):
            assert abs(param.std().item() - scaled) < 0.1 * scaled, name
        elif name.endswith(("qkv.weight", "ff.net.0.weight")) or name in ("tok_emb.weight", "out_head.weight"):
            assert abs(param.std().item() - 0.02) < 0.002, name
        elif name.endswith("bias") and "norm" not in name:
            assert torch.count_nonzero(param) == 0, name
