"""utils.hf_interop: export to / import from transformers' DeepseekV3 (Lecture 29)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from utils.generation import generate  # noqa: E402
from utils.hf_interop import (MODEL_FILE, MTP_FILE, ExportDirectoryNotEmpty, export_hf, import_hf,  # noqa: E402
                              to_transformers_config)
from utils.model import DeepSeekConfig, DeepSeekModel  # noqa: E402

BASE = dict(vocab_size=211, context_length=64, d_model=32, n_layers=3, n_heads=4, kv_lora_rank=16,
            qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, q_lora_rank=24, d_ff=48, first_k_dense=1,
            n_routed=4, n_shared=1, top_k=2, expert_hidden=16)

CASES = {
    "q_lora": {},
    "no_q_lora": dict(q_lora_rank=None),
    "dense_only": dict(first_k_dense=3),
    "groups_bias_2shared": dict(n_routed=8, n_groups=4, topk_groups=2, top_k=3, n_shared=2,
                                routed_scaling_factor=2.5, norm_topk_prob=False),
    "tied_mtp": dict(tie_embeddings=True, mtp_depth=1),
    "untied_mtp2": dict(mtp_depth=2, first_k_dense=0),
    "no_shared": dict(n_shared=0, n_routed=6, top_k=1, mtp_depth=1),
}


def make_model(seed: int = 0, **overrides) -> DeepSeekModel:
    """A tiny model with every weight random (norms around 1, non-zero correction biases), so a wrong
    mapping of any tensor shows in the logits."""
    torch.manual_seed(seed)
    model = DeepSeekModel(DeepSeekConfig(**{**BASE, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3 if "embed" in name or "lm_head" in name else 0.15)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    return model


def load_hf(directory):
    hf, info = transformers.DeepseekV3ForCausalLM.from_pretrained(directory, output_loading_info=True)
    hf.eval()
    hf.generation_config.pad_token_id = hf.generation_config.eos_token_id = None
    return hf, info


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(ids).logits


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, BASE["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(1))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # transformers, n_shared=0's empty experts
@pytest.mark.parametrize("case", list(CASES))
def test_transformers_loads_export_with_same_logits(case, ids, tmp_path):
    model = make_model(**CASES[case])
    export_hf(model, tmp_path / "m")
    hf, info = load_hf(tmp_path / "m")
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    assert hf.dtype == torch.float32
    with torch.no_grad():
        ours = model(ids)
    theirs = hf_logits(hf, ids)
    assert (ours - theirs).abs().max().item() <= 1e-4
    if model.cfg.tie_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == sorted(["config.json", MODEL_FILE] + ([MTP_FILE] if model.cfg.mtp_depth else []))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3"
    assert config["num_nextn_predict_layers"] == model.cfg.mtp_depth


def test_mtp_weights_use_deepseek_v3_names(tmp_path):
    model = make_model(mtp_depth=1)
    export_hf(model, tmp_path / "m")
    mtp = safetensors_torch.load_file(str(tmp_path / "m" / MTP_FILE))
    n, d = model.cfg.n_layers, model.cfg.d_model
    p = f"model.layers.{n}."
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "input_layernorm.weight",
                 "post_attention_layernorm.weight", "shared_head.norm.weight", "self_attn.kv_b_proj.weight",
                 "self_attn.q_a_proj.weight", "mlp.gate.weight", "mlp.gate.e_score_correction_bias",
                 "mlp.experts.0.gate_proj.weight", "mlp.experts.3.down_proj.weight",
                 "mlp.shared_experts.up_proj.weight"):
        assert p + name in mtp, name
    assert all(k.startswith(p) for k in mtp)
    assert "model.embed_tokens.weight" not in mtp  # shared with the main model, not stored again
    # DeepSeek's layout concatenates [enorm(emb); hnorm(h)]: embedding half first
    module = model.mtp[0]
    torch.testing.assert_close(mtp[p + "eh_proj.weight"][:, :d], module.eh_proj.weight[:, d:], rtol=0, atol=0)
    torch.testing.assert_close(mtp[p + "eh_proj.weight"][:, d:], module.eh_proj.weight[:, :d], rtol=0, atol=0)
    main = safetensors_torch.load_file(str(tmp_path / "m" / MODEL_FILE))
    assert not any(k.startswith(p) for k in main)


@pytest.mark.parametrize("case", ["q_lora", "no_q_lora", "tied_mtp", "untied_mtp2", "groups_bias_2shared", "no_shared"])
def test_round_trip_identical(case, ids, tmp_path):
    model = make_model(seed=3, **CASES[case])
    export_hf(model, tmp_path / "m")
    back = import_hf(tmp_path / "m")
    assert back.cfg == model.cfg
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if model.cfg.tie_embeddings:
        assert back.lm_head.weight is back.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(model(ids), back(ids))
        if model.cfg.mtp_depth:
            h = model.hidden_states(ids[:, :-1])
            assert torch.equal(model.mtp_draft_logits(h, ids[:, 1:]), back.mtp_draft_logits(h, ids[:, 1:]))


def test_import_of_transformers_save_pretrained(ids, tmp_path):
    """The reverse direction on its own: a checkpoint written by transformers, not by export_hf."""
    model = make_model(q_lora_rank=None, n_routed=8, n_groups=2, topk_groups=1)
    hf_cfg = to_transformers_config(model.cfg)
    hf_cfg.num_nextn_predict_layers = 0
    torch.manual_seed(5)
    hf = transformers.DeepseekV3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.copy_(1.0 + 0.2 * torch.randn_like(p))
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    hf.save_pretrained(tmp_path / "hf")
    ours = import_hf(tmp_path / "hf")
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_greedy_generate_matches_transformers(tmp_path):
    model = make_model(seed=7, mtp_depth=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # sharper logits: no near-ties in the greedy choice
    export_hf(model, tmp_path / "m")
    hf, _ = load_hf(tmp_path / "m")
    prompt = torch.randint(0, BASE["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(2))
    theirs = hf.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    ours = generate(import_hf(tmp_path / "m"), prompt, 20, use_cache=True)
    assert torch.equal(ours, theirs)


# --- bad input ------------------------------------------------------------------------------------------

def test_refuses_non_empty_directory_unless_overwrite(tmp_path):
    model = make_model()
    target = tmp_path / "m"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        export_hf(model, target)
    with pytest.raises(FileExistsError):
        export_hf(model, target)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    export_hf(model, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", MODEL_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary directory left behind
    other = make_model(seed=1)
    export_hf(other, target, overwrite=True)
    assert torch.equal(import_hf(target).lm_head.weight, other.lm_head.weight)
    export_hf(model, tmp_path / "empty_ok")  # new directory
    (tmp_path / "empty").mkdir()
    export_hf(model, tmp_path / "empty")  # existing empty directory


def test_refuses_what_transformers_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="sigmoid"):
        export_hf(make_model(scoring="softmax"), tmp_path / "a")
    with pytest.raises(ValueError, match="two largest"):
        export_hf(make_model(n_groups=4, topk_groups=2), tmp_path / "b")
    with pytest.raises(ValueError, match="DeepSeekModel"):
        export_hf(torch.nn.Linear(2, 2), tmp_path / "c")
    assert not any(tmp_path.iterdir())


@pytest.fixture
def exported(tmp_path):
    target = tmp_path / "m"
    export_hf(make_model(mtp_depth=1), target)
    return target


def _edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_rejects_other_architecture(exported):
    _edit_config(exported, model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(ValueError, match="deepseek_v3"):
        import_hf(exported)


def test_rejects_unsupported_deepseek_variant(exported):
    _edit_config(exported, rope_interleave=False)
    with pytest.raises(ValueError, match="rope_interleave"):
        import_hf(exported)


def test_rejects_truncated_safetensors(exported):
    path = exported / MODEL_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="safetensors"):
        import_hf(exported)


def test_rejects_foreign_file(exported):
    (exported / MODEL_FILE).write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(ValueError, match="safetensors"):
        import_hf(exported)


def test_rejects_missing_extra_and_misshaped_tensors(exported):
    path = exported / MODEL_FILE
    good = safetensors_torch.load_file(str(path))
    missing = dict(good)
    del missing["model.layers.1.self_attn.kv_b_proj.weight"]
    extra = {**good, "model.layers.0.mlp.bonus.weight": torch.zeros(2)}
    shaped = {**good, "model.norm.weight": torch.ones(5)}
    for sd, word in ((missing, "missing"), (extra, "unexpected"), (shaped, "mis-shaped")):
        safetensors_torch.save_file(sd, str(path))
        with pytest.raises(ValueError, match=word):
            import_hf(exported)


def test_rejects_weights_of_another_config(tmp_path):
    export_hf(make_model(), tmp_path / "a")
    export_hf(make_model(kv_lora_rank=8, n_routed=8), tmp_path / "b")
    (tmp_path / "a" / MODEL_FILE).write_bytes((tmp_path / "b" / MODEL_FILE).read_bytes())
    with pytest.raises(ValueError, match="another configuration"):
        import_hf(tmp_path / "a")


def test_rejects_inconsistent_mtp(exported):
    _edit_config(exported, num_nextn_predict_layers=2)
    with pytest.raises(ValueError, match="MTP"):
        import_hf(exported)


def test_missing_mtp_file_warns_and_builds_without_mtp(exported):
    (exported / MTP_FILE).unlink()
    with pytest.warns(UserWarning, match="MTP"):
        model = import_hf(exported)
    assert model.cfg.mtp_depth == 0 and len(model.mtp) == 0


def test_rejects_missing_directory_and_config(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        import_hf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        import_hf(tmp_path / "empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "config.json").write_text("{not json")
        with pytest.raises(ValueError, match="JSON"):
            import_hf(tmp_path / "bad")


# --- the fast attention path the model uses (utils.mla_rope.DeepSeekMLA.forward_fast) --------------------

@pytest.mark.parametrize("q_lora, nope, rope, d_v", [(None, 8, 4, 8), (12, 3, 6, 5), (12, 8, 4, 16)])
def test_fast_attention_path_equals_naive(q_lora, nope, rope, d_v):
    """Fused prefill (SDPA, v padded to the q/k width), chunked prefill and absorbed decode steps give the
    naive path's output, with the same cache contents."""
    from utils.mla_rope import DeepSeekMLA, DeepSeekMLAConfig
    torch.manual_seed(0)
    for absorb in (True, False):
        cfg = DeepSeekMLAConfig(d_model=24, n_heads=3, kv_lora_rank=10, qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                                v_head_dim=d_v, q_lora_rank=q_lora, context_length=40, absorb=absorb)
        layer = DeepSeekMLA(cfg).eval()
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0.0, 0.4)
            x = torch.randn(2, 20, 24)
            ref, _ = layer.forward_naive(x)
            ref_cache = layer.new_cache(2)
            layer.forward_naive(x, cache=ref_cache)
            torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-5)
            for chunks in ((20,), (7, 1, 1, 11), (4,) + (1,) * 16, (17, 3)):
                cache, outs, s = layer.new_cache(2), [], 0
                for n in chunks:
                    outs.append(layer(x[:, s:s + n], cache=cache))
                    s += n
                torch.testing.assert_close(torch.cat(outs, 1), ref, rtol=0, atol=1e-5)
                torch.testing.assert_close(cache.latent, ref_cache.latent, rtol=0, atol=1e-6)
