"""Lecture 29: the assembled mini DeepSeek (utils.model)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from utils import configs
from utils.deepseek_mtp import MTPModule
from utils.generation import generate
from utils.kv_cache import LatentCache
from utils.mla_rope import DeepSeekMLA
from utils.model import (DeepSeekBlock, DeepSeekConfig, DeepSeekModel, DeepSeekOutput, MTPLambdaSchedule,
                         count_parameters, deepseek_loss, linear_cross_entropy)
from utils.moe import DeepSeekMoE, SwiGLUExpert, sequence_balance_loss, update_moe_biases


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return DeepSeekModel(DeepSeekConfig.tiny(**overrides))


def ids(shape, vocab=97, seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def stored_parameters(model):
    """nn.Parameters (each tensor once) plus the correction biases that count_parameters counts (sigmoid)."""
    n = sum(p.numel() for p in model.parameters())
    if model.cfg.scoring == "sigmoid":
        n += sum(m.e_score_correction_bias.numel() for m in model.modules() if isinstance(m, DeepSeekMoE))
    return n


def mtp_stored(model):
    n = sum(p.numel() for p in model.mtp.parameters())
    if model.cfg.scoring == "sigmoid":
        n += sum(m.e_score_correction_bias.numel() for m in model.mtp.modules() if isinstance(m, DeepSeekMoE))
    return n


VARIANTS = {
    "tiny": {},
    "no query compression": dict(q_lora_rank=None),
    "dense only": dict(first_k_dense=3),
    "all MoE": dict(first_k_dense=0),
    "groups 4, keep 2": dict(n_groups=4, topk_groups=2),
    "two shared experts": dict(n_shared=2),
    "tied head": dict(tie_embeddings=True),
    "softmax, no MTP": dict(scoring="softmax", mtp_depth=0),
    "MTP depth 2": dict(mtp_depth=2),
}


# --- structure and shapes -----------------------------------------------------------------------------

def test_structure_uses_the_lecture_modules():
    m = build()
    assert [type(layer.mlp) for layer in m.layers] == [SwiGLUExpert, DeepSeekMoE, DeepSeekMoE]
    assert all(isinstance(layer.self_attn, DeepSeekMLA) for layer in m.layers)
    assert len(m.mtp) == 1 and isinstance(m.mtp[0], MTPModule) and isinstance(m.mtp[0].block, DeepSeekBlock)
    assert isinstance(m.mtp[0].block.mlp, DeepSeekMoE)  # layer index n_layers >= first_k_dense
    assert "mtp.0.shared_head.norm.weight" in m.state_dict()
    assert m.blocks is m.layers and m.layers[0].attn is m.layers[0].self_attn


def test_shapes():
    m = build().eval()
    x = ids((2, 10))
    assert m(x).shape == (2, 10, 97)
    h = m.hidden_states(x)
    assert h.shape == (2, 10, 32)
    assert m.logits_from_hidden(h).shape == (2, 10, 97)
    assert m.mtp_draft_logits(h, ids((2, 10), seed=3)).shape == (2, 10, 97)
    out = m(x[:, :-1], x[:, 1:])
    assert isinstance(out, DeepSeekOutput) and out.logits.shape == (2, 9, 97)
    assert all(t.shape == () for t in out[1:])
    seq = x  # depth 2: n = T - D positions
    m2 = build(mtp_depth=2).eval()
    assert m2.mtp_logits(m2.hidden_states(seq[:, :-1]), seq).shape == (2, 8, 2, 97)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_run_and_count(name):
    m = build(**VARIANTS[name])
    x = ids((2, 9))
    out = m(x[:, :-1], x[:, 1:])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    count = count_parameters(m.cfg)
    assert count.total + count.mtp_total == stored_parameters(m)
    assert count.mtp_total == mtp_stored(m)
    if name == "dense only":
        assert not any(isinstance(mod, DeepSeekMoE) for mod in m.modules())
        assert out.balance_loss.item() == 0.0
    if name == "tied head":
        assert m.lm_head.weight is m.embed_tokens.weight
        untied = count_parameters(dataclasses.replace(m.cfg, tie_embeddings=False))
        assert count.total == untied.total - 97 * 32 and count.activated == untied.activated - 97 * 32


def test_mtp_shares_embedding_and_head():
    m = build()
    assert m.embedding is m.embed_tokens and m.shared_head is m.lm_head
    own = {id(p) for p in m.mtp.parameters()}
    assert id(m.embed_tokens.weight) not in own and id(m.lm_head.weight) not in own
    assert not any(97 in p.shape for p in m.mtp.parameters())  # no vocabulary-sized copy
    x = ids((2, 9))
    out = m(x[:, :-1], x[:, 1:])
    emb_grad, head_grad = torch.autograd.grad(out.mtp_loss, [m.embed_tokens.weight, m.lm_head.weight])
    assert emb_grad.abs().sum() > 0 and head_grad.abs().sum() > 0


def test_initialisation():
    m = DeepSeekModel(DeepSeekConfig.small(vocab_size=500))
    w = torch.cat([m.embed_tokens.weight.flatten(), m.lm_head.weight.flatten(),
                   m.layers[1].mlp.experts[0].up_proj.weight.flatten()])
    assert abs(w.std().item() - 0.02) < 0.001
    assert torch.all(m.norm.weight == 1) and torch.all(m.layers[1].mlp.e_score_correction_bias == 0)


# --- causality, losses, paths ---------------------------------------------------------------------------

def test_every_layer_is_causal():
    m = build(mtp_depth=2).eval()
    outputs = {}
    hooks = [mod.register_forward_hook(lambda mod, args, out, name=name: outputs.__setitem__(name, out))
             for name, mod in [*((f"layer {i}", l) for i, l in enumerate(m.layers)),
                               *((f"mtp {k}", mod) for k, mod in enumerate(m.mtp))]]
    x = ids((1, 12))
    j = 7
    y = x.clone()
    y[0, j] = (x[0, j] + 1) % 97
    runs = []
    for seq in (x, y):
        outputs.clear()
        with torch.no_grad():
            m(seq[:, :-1], seq[:, 1:])
        runs.append(dict(outputs))
    for h in hooks:
        h.remove()
    for name in runs[0]:
        a, b = runs[0][name], runs[1][name]
        # MTP depth k at position i reads token i + k, so the change at j reaches it from i = j - k
        first = j - (int(name.split()[1]) + 1 if name.startswith("mtp") else 0)
        assert (a[:, :first] - b[:, :first]).abs().max() < 1e-6, name  # (rounding: experts batch other token sets)
        assert (a[:, first] - b[:, first]).abs().max() > 1e-3, name


def test_losses_equal_hand_computation():
    m = build(seq_aux_alpha=0.01).train()
    m.mtp_lambda = 0.25
    x = ids((2, 12))
    inp, tgt = x[:, :-1], x[:, 1:]
    captured = []
    hooks = [mod.register_forward_hook(lambda mod, args, out: captured.append(args[0]))
             for mod in m.modules() if isinstance(mod, DeepSeekMoE)]
    out = m(inp, tgt)
    for h in hooks:
        h.remove()
    main = F.cross_entropy(out.logits.flatten(0, 1), tgt.flatten())
    torch.testing.assert_close(out.main_loss, main)
    # MTP depth 1: (h_i, Emb(t_{i+1})) -> t_{i+2} = tgt[:, i + 1], positions 0 ... T - 2
    h = m.hidden_states(inp)
    mod = m.mtp[0]
    h1 = mod.block(mod.eh_proj(torch.cat([mod.hnorm(h), mod.enorm(m.embed_tokens(tgt))], dim=-1)))
    logits1 = m.lm_head(mod.shared_head["norm"](h1))
    mtp = 0.25 * F.cross_entropy(logits1[:, :-1].flatten(0, 1), tgt[:, 1:].flatten())
    torch.testing.assert_close(out.mtp_loss, mtp)
    # balance: sequence-wise loss of every MoE layer (2 main + 1 MTP), recomputed from its input
    moes = [mod for mod in m.modules() if isinstance(mod, DeepSeekMoE)]
    balance = 0.0
    for layer, inp_x in zip(moes, captured):
        _, indices, scores = layer.route(inp_x.reshape(-1, 32))
        balance = balance + sequence_balance_loss(scores.view(2, 11, -1), indices.view(2, 11, -1), 2, 0.01)
    torch.testing.assert_close(out.balance_loss, balance)
    torch.testing.assert_close(out.loss, main + mtp + balance)
    loss, metrics = deepseek_loss(m, inp, tgt)
    assert set(metrics) == {"lm", "mtp", "balance"} and all(isinstance(v, float) for v in metrics.values())


def test_naive_and_absorbed_paths_agree(monkeypatch):
    """The whole model (losses too) through lecture 17's explicit naive and absorbed paths, and as it runs."""
    m = build().eval()
    x = ids((2, 16))
    default = m(x[:, :-1], x[:, 1:])
    attentions = [mod for mod in m.modules() if isinstance(mod, DeepSeekMLA)]
    for path in ("forward_naive", "forward_absorbed"):
        for attn in attentions:
            monkeypatch.setattr(attn, "forward", lambda h, cache=None, f=getattr(attn, path): f(h, cache)[0])
        out = m(x[:, :-1], x[:, 1:])
        for a, b in zip(default, out):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    m.use_absorbed(True)  # forcing the flag without a cache changes nothing either
    for a, b in zip(default, m(x[:, :-1], x[:, 1:])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert m.layers[0].self_attn.cfg.absorb and m.mtp[0].block.self_attn.cfg.absorb


def test_cached_generation_is_absorbed_and_equals_uncached():
    m = build(seed=3).eval()
    prompt = ids((2, 5), seed=4)
    cache = m.new_cache(2)
    assert isinstance(cache.layers[0], LatentCache) and cache.layers[0].c.shape == (2, 32, 16 + 4)
    logits = [m(prompt, cache=cache)]
    assert m.layers[0].self_attn.cfg.absorb  # the cache took the absorbed path
    seq = prompt
    for _ in range(6):
        seq = torch.cat([seq, logits[-1][:, -1:].argmax(-1)], dim=1)
        logits.append(m(seq[:, -1:], cache=cache))
    full = m(seq)
    assert not m.layers[0].self_attn.cfg.absorb  # and no cache took the naive one
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=0, atol=1e-5)
    assert torch.equal(generate(m, prompt, 6), generate(m, prompt, 6, use_cache=True))
    short = build(seed=3, context_length=8).eval()  # past the context the cache is rebuilt
    assert torch.equal(generate(short, prompt[:1], 6), generate(short, prompt[:1], 6, use_cache=True))


def test_protocol_with_caches_equals_without():
    m = build(seed=5).eval()
    x = ids((1, 12), seed=6)
    h = m.hidden_states(x)
    torch.testing.assert_close(m.logits_from_hidden(h), m(x))
    cache, mtp_cache = m.new_cache(1), m.new_mtp_cache(1)
    assert len(mtp_cache) == 1
    h_parts = [m.hidden_states(x[:, :7], cache), m.hidden_states(x[:, 7:], cache)]
    torch.testing.assert_close(torch.cat(h_parts, 1), h, rtol=0, atol=1e-5)
    draft = m.mtp_draft_logits(h[:, :-1], x[:, 1:])  # (1, 11, V): scores t_{i+2}
    seq = x
    torch.testing.assert_close(draft, m.mtp_logits(h, seq)[:, :, 0], rtol=0, atol=1e-6)
    parts = [m.mtp_draft_logits(h[:, :4], x[:, 1:5], mtp_cache), m.mtp_draft_logits(h[:, 4:11], x[:, 5:], mtp_cache)]
    torch.testing.assert_close(torch.cat(parts, 1), draft, rtol=0, atol=1e-5)


def test_speculative_equals_greedy():
    mtp = pytest.importorskip("utils.mtp")
    if not hasattr(mtp, "speculative_generate"):
        pytest.skip("utils.mtp.speculative_generate not written yet")
    m = build(seed=7).eval()
    for seed, n in ((8, 6), (9, 10)):
        prompt = ids((1, 3), seed=seed)
        for use_cache in (True, False):
            out, stats = mtp.speculative_generate(m, prompt, n, use_cache=use_cache)
            assert torch.equal(out, generate(m, prompt, n)) and stats.new_tokens == n


# --- parameter and cache accounting ---------------------------------------------------------------------

@pytest.mark.parametrize("name, spec, total, activated", [
    ("v3", "DeepSeek-V3", 671.03, 37.55), ("v2", "DeepSeek-V2", 235.74, 21.38),
    ("v2_lite", "DeepSeek-V2-Lite", 15.71, 2.66)])
def test_real_configs_count_as_utils_configs(name, spec, total, activated):
    cfg = getattr(DeepSeekConfig, name)()
    ours, theirs = count_parameters(cfg), configs.count_parameters(configs.get_config(spec))
    assert ours.total == theirs.total
    assert ours.activated == theirs.activated + cfg.vocab_size * cfg.d_model  # the embedding counted
    assert round(ours.total / 1e9, 2) == total and round(ours.activated / 1e9, 2) == activated
    assert (ours.mtp_total > 0) == (name == "v3")


@pytest.mark.parametrize("name, layers", [("v3", 4), ("v2", 2), ("v2_lite", 2)])
def test_real_widths_on_the_meta_device(name, layers):
    """The real widths, with fewer layers (the count is linear in the layers), never allocated."""
    cfg = getattr(DeepSeekConfig, name)(n_layers=layers)
    with torch.device("meta"):
        m = DeepSeekModel(cfg)
    assert m.lm_head.weight.is_meta
    count = count_parameters(cfg)
    assert count.total + count.mtp_total == stored_parameters(m)
    assert count.mtp_total == mtp_stored(m)


def test_v3_mtp_and_cache_sizes():
    cfg = DeepSeekConfig.v3()
    assert round(count_parameters(cfg).mtp_total / 1e9, 1) == 11.6  # + embedding and head: about 14B (685B - 671B)
    assert cfg.cache_elements_per_token() == 576
    assert cfg.cache_bytes_per_token(torch.bfloat16) == 1152
    assert cfg.cache_bytes_per_token(torch.bfloat16, per_layer=False) == 70272


# --- training -------------------------------------------------------------------------------------------

class Windows(torch.utils.data.Dataset):
    def __init__(self, n=32, T=8):
        self.data = ids((n * 2 + T + 1,), seed=11)
        self.n, self.T = n, T

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.data[i:i + self.T], self.data[i + 1:i + self.T + 1]


def loaders():
    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.DataLoader(Windows(), batch_size=8, shuffle=True, generator=g)
    return train, torch.utils.data.DataLoader(Windows(16), batch_size=8)


def test_trainer_bias_update_lambda_schedule_and_resume(tmp_path):
    from utils.trainer import TrainConfig, Trainer

    def run(until, resume=False, overwrite=False):
        m = build(seed=12, seq_aux_alpha=0.001)
        schedule = MTPLambdaSchedule(2)  # 0.3 at step 1, then 0.1
        cfg = TrainConfig(steps=4, lr=1e-2, warmup_steps=1, eval_every=4, eval_batches=1,
                          checkpoint_every=2, checkpoint_path=str(tmp_path / "ckpt.pt"))
        t = Trainer(m, *loaders(), cfg, loss_fn=deepseek_loss, hooks=[update_moe_biases, schedule], log=None,
                    overwrite=overwrite)
        if resume:
            t.resume()
            assert schedule.current == 0.1  # the state of step 2 (a fresh schedule holds 0.3)
        t.run(until)
        return m, t, schedule

    m, t, schedule = run(4, overwrite=True)
    assert set(t.history.metrics) == {"lm", "mtp", "balance"}
    assert schedule.current == 0.1 and m.mtp_lambda == 0.1
    biases = [layer.mlp.e_score_correction_bias for layer in m.layers[1:]]
    assert all(b.abs().sum() > 0 for b in biases)  # the bias update ran
    full = t.history.train_losses
    run(2, overwrite=True)
    m2, t2, _ = run(4, resume=True)
    assert t2.history.train_losses == full
    torch.testing.assert_close(m2.state_dict(), m.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="schedule"):
        MTPLambdaSchedule(4).load_state_dict(schedule.state_dict())


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, fragment", [
    (dict(top_k=9), "top_k 9 exceeds"),
    (dict(n_groups=3), "must divide"),
    (dict(n_groups=4, topk_groups=5), "topk_groups 5"),
    (dict(n_groups=4, topk_groups=1, top_k=3), "after group limiting"),
    (dict(first_k_dense=4), "first_k_dense = 4"),
    (dict(first_k_dense=-1), "first_k_dense = -1"),
    (dict(qk_rope_head_dim=5), "must be even"),
    (dict(mtp_depth=-1), "mtp_depth"),
    (dict(d_model=-32), "d_model"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(kv_lora_rank=0), "kv_lora_rank"),
    (dict(expert_hidden=0), "expert_hidden"),
    (dict(n_shared=-1), "n_shared"),
    (dict(q_lora_rank=0), "q_lora_rank"),
    (dict(scoring="relu"), "scoring"),
    (dict(dropout=1.0), "dropout"),
    (dict(n_layers=2.5), "n_layers"),
])
def test_bad_configs(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        DeepSeekConfig.tiny(**overrides)


def test_bad_input():
    m = build().eval()
    x = ids((2, 8))
    for bad, fragment in [(x.float(), "LongTensor"), (x[0], "LongTensor"), (x[:, :0], "non-empty"),
                          (x + 97, r"\[0, 97\)"), (ids((1, 33)), "context_length")]:
        with pytest.raises(ValueError, match=fragment):
            m(bad)
    with pytest.raises(ValueError, match="shape"):
        m(x, x[:, :-1])
    with pytest.raises(ValueError, match="shifted by one"):
        m(x, x)
    with pytest.raises(ValueError, match="cache"):
        m(x[:, :-1], x[:, 1:], cache=m.new_cache(2))
    cache = m.new_cache(2)
    m(ids((2, 30)), cache=cache)
    with pytest.raises(ValueError, match="context_length"):
        m(x[:, :3], cache=cache)
    with pytest.raises(ValueError, match="mtp_depth"):
        build(mtp_depth=0).new_mtp_cache(1)
    with pytest.raises(ValueError, match="vocabulary"):
        DeepSeekConfig.small()
    assert DeepSeekConfig.small(type("Tok", (), {"vocab_size": 321})()).vocab_size == 321
    with pytest.raises(ValueError, match="switch_step"):
        MTPLambdaSchedule(0)
    with pytest.raises(ValueError, match="DeepSeekConfig"):
        DeepSeekModel(dataclasses.asdict(DeepSeekConfig.tiny()))


# --- the chunked output head + cross-entropy (Lecture 30's training step) ------------------------------------

@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 10, 64])
def test_linear_cross_entropy_equals_the_plain_head(chunk_rows):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    w = torch.randn(11, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 11, (2, 5), generator=g)
    t[0, 2] = t[1, 4] = -100  # ignored positions, as mtp_targets pads
    loss = linear_cross_entropy(h, w, t, chunk_rows=chunk_rows)
    gh, gw = torch.autograd.grad(3.0 * loss, (h, w))  # a scaled upstream gradient
    ref = F.cross_entropy((h @ w.T).flatten(0, 1), t.flatten(), ignore_index=-100)
    rh, rw = torch.autograd.grad(3.0 * ref, (h, w))
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gh, rh, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gw, rw, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # no gradient wanted: the loss only
        torch.testing.assert_close(linear_cross_entropy(h, w, t, chunk_rows=chunk_rows), ref.detach())


def test_linear_cross_entropy_frozen_head_and_bad_input():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 4, generator=g, requires_grad=True)
    w = torch.randn(9, 4, generator=g)  # no gradient for the head
    t = torch.randint(0, 9, (6,), generator=g)
    (gh,) = torch.autograd.grad(linear_cross_entropy(h, w, t, chunk_rows=4), (h,))
    (rh,) = torch.autograd.grad(F.cross_entropy(h @ w.T, t), (h,))
    torch.testing.assert_close(gh, rh, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="width"):
        linear_cross_entropy(h, w[:, :3], t)
    with pytest.raises(ValueError, match="leading shape"):
        linear_cross_entropy(h, w, t[:5])
    with pytest.raises(ValueError, match="LongTensor"):
        linear_cross_entropy(h, w, t.int())
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy(h, w, t, chunk_rows=0)


@pytest.mark.parametrize("overrides", [dict(mtp_depth=2), dict(tie_embeddings=True), dict(mtp_depth=0)])
def test_losses_without_logits_equal_the_logits_path(overrides, monkeypatch):
    import utils.model as model_module
    monkeypatch.setattr(model_module, "LOSS_CHUNK_ELEMENTS", 97 * 5)  # 5 rows per chunk: several chunks
    model = build(seed=3, **overrides)
    seq = ids((2, 10), seed=4)
    x, y = seq[:, :-1], seq[:, 1:]

    def run(**kw):
        model.zero_grad(set_to_none=True)
        out = model(x, y, **kw)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, g_full = run()
    lean, g_lean = run(return_logits=False)
    assert lean.logits is None and full.logits.shape == (2, 9, 97)
    for a, b in zip(full[1:], lean[1:]):  # loss, main, mtp, balance
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert g_full.keys() == g_lean.keys()
    for name in g_full:
        torch.testing.assert_close(g_lean[name], g_full[name], atol=1e-6, rtol=1e-5, msg=name)
    loss, parts = deepseek_loss(model, x, y)  # the trainer's loss_fn takes the chunked path
    torch.testing.assert_close(loss, full.loss, atol=1e-6, rtol=1e-6)
    assert parts["lm"] == pytest.approx(full.main_loss.item(), abs=1e-6)



# --- the absorbed training path of DeepSeekMLA (Lecture 30's training step) ----------------------------------

@pytest.mark.parametrize("q_lora_rank", [24, None])
def test_absorbed_training_path_equals_naive(q_lora_rank):
    from utils.mla_rope import DeepSeekMLAConfig
    cfg = DeepSeekMLAConfig(d_model=32, n_heads=4, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4,
                            v_head_dim=8, q_lora_rank=q_lora_rank, context_length=16)
    torch.manual_seed(0)
    attn = DeepSeekMLA(cfg)
    assert attn.absorb_in_training  # 2 d_c = 16 <= d_h + d_v = 16
    x = torch.randn(2, 11, 32, requires_grad=True)
    fast, (naive, _) = attn(x), attn.forward_naive(x)
    torch.testing.assert_close(fast, naive, atol=1e-6, rtol=1e-5)
    up = torch.randn(fast.shape, generator=torch.Generator().manual_seed(1))
    params = [x] + list(attn.parameters())
    for a, b in zip(torch.autograd.grad((fast * up).sum(), params), torch.autograd.grad((naive * up).sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_absorbed_training_only_where_it_is_cheaper(monkeypatch):
    from utils.mla_rope import DeepSeekMLAConfig
    wide = DeepSeekMLA(DeepSeekMLAConfig(d_model=32, n_heads=4, kv_lora_rank=16, qk_nope_head_dim=8,
                                         qk_rope_head_dim=4, v_head_dim=8, context_length=16))
    assert not wide.absorb_in_training  # 2 d_c = 32 > d_h + d_v = 16: the expanded path
    with torch.device("meta"):
        assert not DeepSeekMLA(DeepSeekMLAConfig.v3()).absorb_in_training  # V3 trains naive
    model = build(seed=5, kv_lora_rank=8)  # tiny: d_h = d_v = 8, so absorbed
    assert all(layer.self_attn.absorb_in_training for layer in model.layers)
    seq = ids((2, 12), seed=6)
    absorbed = model(seq[:, :-1], seq[:, 1:], return_logits=False).loss
    monkeypatch.setattr(DeepSeekMLA, "absorb_in_training", property(lambda self: False))
    expanded = model(seq[:, :-1], seq[:, 1:], return_logits=False).loss
    torch.testing.assert_close(absorbed, expanded, atol=1e-6, rtol=1e-6)
