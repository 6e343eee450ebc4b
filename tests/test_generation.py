import pytest
import torch

from utils.generation import generate, sample_next
from utils.gpt import GPTConfig, GPTModel

CFG = GPTConfig(vocab_size=40, context_length=8, d_model=16, n_heads=2, n_layers=1, dropout=0.1)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPTModel(CFG)


def test_greedy_matches_manual_argmax_with_cropping(model):
    prompt = torch.tensor([[1, 2, 3]])
    out = generate(model, prompt, max_new_tokens=10)
    model.eval()
    idx = prompt
    with torch.no_grad():
        for _ in range(10):
            nxt = model(idx[:, -8:])[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], 1)
    assert torch.equal(out, idx) and out.shape == (1, 13)


def test_mode_is_restored(model):
    model.train()
    generate(model, torch.tensor([[1]]), 2)
    assert model.training


def test_sampling_is_seeded_and_top_k_one_is_greedy(model):
    prompt = torch.tensor([[5, 6]])
    a = generate(model, prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = generate(model, prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(generate(model, prompt, 6, temperature=2.0, top_k=1), generate(model, prompt, 6))


def test_top_k_never_samples_outside_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 5.0, top_k=2, generator=g)) for _ in range(200)}
    assert picks == {1, 2}


def test_stops_at_eos(model):
    first = int(generate(model, torch.tensor([[1, 2]]), 1)[0, -1])
    out = generate(model, torch.tensor([[1, 2]]), 5, eos_id=first)
    assert out.shape == (1, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=3, temperature=-0.5), "temperature"),
    (dict(max_new_tokens=3, top_k=0), "top_k"),
])
def test_bad_arguments_raise(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([[1]]), **kwargs)


def test_ids_outside_vocabulary_raise(model):
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        generate(model, torch.tensor([[1, 40]]), 2)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, torch.tensor([1, 2]), 2)


def test_cached_greedy_matches_manual_argmax_with_cropping(model):
    """Lecture 09: with the cache, the same tokens as the uncached loop, also past context_length (8)."""
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(model, prompt, 10, use_cache=True), generate(model, prompt, 10))


def test_use_cache_needs_a_model_with_cache_support():
    class Plain(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()

        def forward(self, x):
            return x

    model = GPTModel(CFG, attention=Plain)
    with pytest.raises(ValueError, match="no KV-cache support"):
        generate(model, torch.tensor([[1]]), 2, use_cache=True)
