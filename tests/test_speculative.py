"""Lecture 25: speculative decoding with an MTP module (utils.mtp) and cache truncation (utils.kv_cache)."""

import pytest
import torch
import torch.nn.functional as F

from utils.deepseek_mtp import DeepSeekMTP, mtp_targets
from utils.generation import generate
from utils.gpt import GPTConfig, GPTModel
from utils.kv_cache import KVCache, LatentCache, LayerKVCache
from utils.mla import MultiHeadLatentAttention
from utils.mtp import SpeculativeStats, greedy_accept, speculative_generate

V, CTX = 13, 48


def random_model(seed=0, n_layers=2):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=V, context_length=CTX, d_model=16, n_heads=2, n_layers=n_layers, dropout=0.0)
    return DeepSeekMTP(GPTModel(cfg), depth=1)


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained on a cyclic sequence (a fixed permutation of the vocabulary, repeated):
    the next token and the one after are both determined, so the MTP module learns to draft right."""
    torch.manual_seed(1)
    model = random_model(1)
    cycle = torch.randperm(V, generator=torch.Generator().manual_seed(2))
    data = cycle.repeat(CTX // V + 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    for _ in range(150):
        starts = torch.randint(0, V, (8,), generator=gen)
        x = torch.stack([data[s:s + 32] for s in starts])
        main_loss, l_mtp = model.loss(x, lam=1.0)
        opt.zero_grad()
        (main_loss + l_mtp).backward()
        opt.step()
    return model.eval(), cycle


def prompts(seed, lengths=(1, 4, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (1, T), generator=g) for T in lengths]


@pytest.mark.parametrize("use_cache", [True, False])
def test_equals_greedy_on_random_models(use_cache):
    for seed in (0, 1):
        model = random_model(seed)
        for idx in prompts(seed):
            for n in (0, 1, 2, 17, CTX - idx.shape[1]):
                out, stats = speculative_generate(model, idx, n, use_cache=use_cache)
                assert torch.equal(out, generate(model.model, idx, n)), (seed, idx.shape, n)
                assert stats.new_tokens == n
                # the prefill, then one verification pass per draft
                assert stats.main_passes == (0 if n == 0 else 1 + stats.drafted)
                assert stats.main_passes + stats.accepted >= n  # each pass yields 1 token, plus accepted drafts


@pytest.mark.parametrize("use_cache", [True, False])
def test_equals_greedy_on_trained_model_and_drafts_are_accepted(trained, use_cache):
    model, cycle = trained
    for idx in prompts(4) + [cycle[:5].unsqueeze(0)]:
        n = CTX - idx.shape[1]
        out, stats = speculative_generate(model, idx, n, use_cache=use_cache)
        assert torch.equal(out, generate(model.model, idx, n))
    assert stats.acceptance_rate > 0.9  # the cycle is learned: almost every draft is right
    assert stats.main_passes < 0.6 * n  # about two tokens per pass


def test_cached_and_uncached_agree(trained):
    model, _ = trained
    for idx in prompts(5):
        a, sa = speculative_generate(model, idx, 20, use_cache=True)
        b, sb = speculative_generate(model, idx, 20, use_cache=False)
        assert torch.equal(a, b) and sa == sb


class WrongDrafter(DeepSeekMTP):
    """The trained model's MTP logits rolled by one token: every draft is the right token + 1, so wrong."""

    def mtp_draft_logits(self, h, next_ids, cache=None):
        return super().mtp_draft_logits(h, next_ids, cache).roll(1, dims=-1)


@pytest.mark.parametrize("use_cache", [True, False])
def test_drafts_rejected_from_the_first(trained, use_cache):
    model, cycle = trained
    wrong = WrongDrafter(model.model, depth=1)
    wrong.mtp.load_state_dict(model.mtp.state_dict())
    wrong.eval()
    idx = cycle[:3].unsqueeze(0)
    for n in (2, 3, 10, 30):
        out, stats = speculative_generate(wrong, idx, n, use_cache=use_cache)
        assert torch.equal(out, generate(model.model, idx, n))
        assert stats.accepted == 0 and stats.drafted == n - 1 and stats.main_passes == n


def test_zeroed_mtp_module_still_exact():
    model = random_model(3)
    with torch.no_grad():
        for p in model.mtp.parameters():
            p.zero_()
    for idx in prompts(6):
        out, stats = speculative_generate(model, idx, 12)
        assert torch.equal(out, generate(model.model, idx, 12))


@pytest.mark.parametrize("use_cache", [True, False])
def test_stop_inside_an_accepted_draft(trained, use_cache):
    model, cycle = trained
    idx = cycle[:4].unsqueeze(0)
    full, _ = speculative_generate(model, idx, 30, use_cache=use_cache)
    for n in range(2, 12):
        out, stats = speculative_generate(model, idx, n, use_cache=use_cache)
        assert out.shape == (1, 4 + n) and stats.new_tokens == n
        assert torch.equal(out, full[:, :4 + n])
    # n = 2: the prefill gives one token, the accepted draft the second; the main model's extra token is dropped
    out, stats = speculative_generate(model, idx, 2, use_cache=use_cache)
    assert (stats.drafted, stats.accepted, stats.main_passes) == (1, 1, 2)


def test_model_mode_restored():
    model = random_model(0).train()
    speculative_generate(model, prompts(0)[0], 4)
    assert model.training


def test_stats():
    s = SpeculativeStats(drafted=10, accepted=7, main_passes=11, new_tokens=18)
    assert s.acceptance_rate == 0.7 and abs(s.tokens_per_pass - 18 / 11) < 1e-12
    assert SpeculativeStats().acceptance_rate == 0.0


def test_greedy_accept():
    logits = F.one_hot(torch.tensor([3, 5, 2, 7]), 9).float()  # the main model's argmax: 3, 5, 2, 7
    assert greedy_accept(torch.tensor([3, 5, 2]), logits) == (3, 7)
    assert greedy_accept(torch.tensor([3, 4, 2]), logits) == (1, 5)  # no acceptance after a rejection
    assert greedy_accept(torch.tensor([1, 5, 2]), logits) == (0, 3)
    n, nxt = greedy_accept(torch.tensor([3]), logits[:2])
    assert (n, nxt) == (1, 5) and isinstance(nxt, int)


# --- protocol pieces ---------------------------------------------------------------------------------

def test_protocol_pieces_match_forward():
    model = random_model(2).eval()
    idx = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(7))
    main, mtp_logits = model(idx)
    h = model.hidden_states(idx)
    torch.testing.assert_close(model.logits_from_hidden(h), main)
    torch.testing.assert_close(model.mtp_draft_logits(h[:, :-1], idx[:, 1:]), mtp_logits[:, :, 0])
    # chunked through the caches: the same numbers
    cache, mtp_cache = model.new_cache(2), model.new_mtp_cache(2)
    h1 = torch.cat([model.hidden_states(idx[:, :6], cache), model.hidden_states(idx[:, 6:], cache)], dim=1)
    torch.testing.assert_close(h1, h)
    d = torch.cat([model.mtp_draft_logits(h[:, :4], idx[:, 1:5], mtp_cache),
                   model.mtp_draft_logits(h[:, 4:9], idx[:, 5:10], mtp_cache)], dim=1)
    torch.testing.assert_close(d, mtp_logits[:, :, 0])
    assert model.cfg is model.model.cfg and cache.position == 10 and mtp_cache.position == 9


# --- truncate ----------------------------------------------------------------------------------------

def test_truncate_then_append_equals_never_appended():
    model = random_model(4).eval()
    g = model.model
    idx = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(8))
    cache = g.new_cache(1)
    g(idx[:, :8], cache=cache)
    g(torch.tensor([[0, 1, 2]]), cache=cache)  # three tokens we then take back
    cache.truncate(8)
    assert cache.position == 8
    out = g(idx[:, 8:], cache=cache)
    torch.testing.assert_close(out, g(idx)[:, 8:])


def test_truncate_latent_cache():
    attn = MultiHeadLatentAttention(16, 16, 16, 2, 4).eval()
    x = torch.randn(1, 7, 16, generator=torch.Generator().manual_seed(9))
    cache = attn.new_cache(1)
    attn(x[:, :5], cache=cache)
    cache.truncate(3)
    out = attn(x[:, 3:], cache=cache)
    torch.testing.assert_close(out, attn(x)[:, 3:])
    assert cache.position == 7


@pytest.mark.parametrize("make", [lambda: LayerKVCache(1, 2, 8, 4), lambda: LatentCache(1, 8, 4),
                                  lambda: KVCache([LayerKVCache(1, 2, 8, 4), LayerKVCache(1, 2, 8, 4)])])
def test_truncate_bad_length(make):
    cache = make()
    with pytest.raises(ValueError, match=r"\[0, position=0\]"):
        cache.truncate(1)
    with pytest.raises(ValueError, match="integer"):
        cache.truncate(-1)
    with pytest.raises(ValueError, match="integer"):
        cache.truncate(0.5)
    cache.truncate(0)
    assert cache.position == 0


# --- bad input -----------------------------------------------------------------------------------------

def test_bad_input():
    model = random_model(0)
    idx = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="batch size 1"):
        speculative_generate(model, torch.zeros(2, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="exceeds context_length"):
        speculative_generate(model, idx, CTX - 3)
    with pytest.raises(ValueError, match="non-negative integer"):
        speculative_generate(model, idx, -1)
    with pytest.raises(ValueError, match="unsqueeze"):
        speculative_generate(model, torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"\[0, 13\)"):
        speculative_generate(model, torch.full((1, 3), V), 3)
    with pytest.raises(ValueError, match="DeepSeekMTP"):  # a plain GPT: no MTP module, no draft head
        speculative_generate(model.model, idx, 3)
    model.mtp = torch.nn.ModuleList()
    with pytest.raises(ValueError, match=">= 1"):
        speculative_generate(model, idx, 3)


def test_bad_mtp_construction():
    g = random_model(0).model
    with pytest.raises(ValueError, match=">= 1"):
        DeepSeekMTP(g, depth=0)
    with pytest.raises(ValueError, match="at least"):
        mtp_targets(torch.zeros(1, 2, dtype=torch.long), 1)  # depth 1 needs depth + 2 tokens for a target
    g.out_head = None
    with pytest.raises(ValueError, match="shared output head"):
        DeepSeekMTP(g, depth=1)
