"""Export a :class:`utils.model.DeepSeekModel` to the Hugging Face format and import it back (Lecture 29).

:func:`export_hf` writes a directory that ``transformers.DeepseekV3ForCausalLM.from_pretrained`` loads
with no missing and no unexpected weights and that gives the same logits (fp32, within 1e-4):

- ``config.json``: a ``DeepseekV3Config`` (:func:`to_transformers_config`), plus the course-only
  fields (bias update speed, balance-loss weight, MTP loss weight, dropout) under
  ``"course_deepseek_config"``, which transformers keeps as an inert attribute;
- ``model.safetensors``: the main model under transformers' names (``model.embed_tokens``,
  ``model.layers.{i}.self_attn.{q_a_proj, q_a_layernorm, q_b_proj | q_proj, kv_a_proj_with_mqa,
  kv_a_layernorm, kv_b_proj, o_proj}``, ``mlp.{gate,up,down}_proj`` or ``mlp.{gate.weight,
  gate.e_score_correction_bias, experts.gate_up_proj, experts.down_proj, shared_experts.*}``,
  ``model.norm``, ``lm_head`` (left out when the head is tied to the embedding));
- ``mtp.safetensors`` (only with MTP modules): transformers builds no MTP layer, so MTP module k
  (1-based) is stored under DeepSeek-V3's own checkpoint names as layer ``num_hidden_layers + k - 1``:
  ``model.layers.{n}.{enorm, hnorm, eh_proj, input_layernorm, self_attn.*, post_attention_layernorm,
  mlp.*, shared_head.norm}``, routed experts one by one (``mlp.experts.{e}.{gate,up,down}_proj.weight``,
  as in DeepSeek's release). The embedding and the head are the main model's and are not stored again.
  Readers of DeepSeek's checkpoints (vLLM's ``deepseek_mtp``) concatenate ``[enorm(emb); hnorm(h)]``,
  embedding first, the reverse of the paper's equation and of :class:`utils.deepseek_mtp.MTPModule`, so ``eh_proj``'s
  two column halves are swapped on the way out and back. ``num_nextn_predict_layers`` in config.json
  gives the number of modules. transformers reads only ``model.safetensors``: the second file is
  invisible to it.

:func:`import_hf` reads such a directory (or one written by transformers' ``save_pretrained``) and
returns a :class:`DeepSeekModel`; routed experts may be fused (transformers' in-memory layout, what
:func:`export_hf` writes to ``model.safetensors``) or one tensor per expert (what ``save_pretrained`` and
DeepSeek's release write). Everything is checked before a single weight is copied: the
architecture, every tensor name and shape; anything wrong raises a ``ValueError`` that says what,
never a partial load.

Without shared experts (``n_shared=0``) the MoE layers get zero-width ``shared_experts`` tensors, since
transformers always builds them. A dense-only model (``first_k_dense == n_layers``) keeps its MTP blocks
dense, as :class:`utils.model.DeepSeekModel` builds them (DeepSeek-V3's own MTP layer is an MoE layer).

What DeepseekV3 in transformers cannot express, and so :func:`to_transformers_config` refuses:
softmax gate scoring (V2; transformers' V3 router is always sigmoid), groups of a single expert when
``n_groups > 1`` (transformers scores a group by its top-2 affinities), an RMSNorm epsilon other than
1e-6 (transformers' latent norms ``q_a_layernorm``/``kv_a_layernorm`` hard-code it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from utils.mla_rope import state_dict_from_transformers, state_dict_to_transformers

__all__ = ["to_transformers_config", "from_transformers_config", "export_hf", "import_hf",
           "to_transformers_state_dict", "mtp_state_dict", "fuse_experts", "unfuse_experts", "ExportDirectoryNotEmpty",
           "MODEL_FILE", "MTP_FILE", "COURSE_KEY"]

MODEL_FILE = "model.safetensors"
MTP_FILE = "mtp.safetensors"
COURSE_KEY = "course_deepseek_config"
HF_EPS = 1e-6  # transformers' q_a_layernorm / kv_a_layernorm epsilon (not configurable)


class ExportDirectoryNotEmpty(FileExistsError, ValueError):
    """:func:`export_hf` was pointed at a non-empty directory without ``overwrite=True``."""


# --- configurations --------------------------------------------------------------------------------------

def _course_config_class():
    from utils.model import DeepSeekConfig
    return DeepSeekConfig


def to_transformers_config(cfg):
    """A ``transformers.DeepseekV3Config`` with the sizes and routing of a :class:`DeepSeekConfig`.

    ValueError for what transformers' DeepseekV3 cannot express (see the module docstring).
    bos/eos/pad ids are None: the course's tiny vocabularies have no special tokens, and greedy
    ``generate`` then never stops early.
    """
    from transformers import DeepseekV3Config
    DeepSeekConfig = _course_config_class()
    if not isinstance(cfg, DeepSeekConfig):
        raise ValueError(f"to_transformers_config expects a utils.model.DeepSeekConfig, got {type(cfg).__name__}.")
    if cfg.first_k_dense < cfg.n_layers:  # routing only matters when there is at least one MoE layer
        if cfg.scoring != "sigmoid":
            raise ValueError(f"transformers' DeepseekV3 router always scores experts with a sigmoid; this config "
                             f"uses scoring={cfg.scoring!r} (DeepSeek-V2). Build it with scoring='sigmoid' to export.")
        if cfg.n_routed // cfg.n_groups < 2:
            raise ValueError(f"transformers scores each expert group by its two largest affinities, so a group needs "
                             f"at least 2 experts; {cfg.n_routed} experts in {cfg.n_groups} groups have "
                             f"{cfg.n_routed // cfg.n_groups}. Use fewer groups (n_groups <= {cfg.n_routed // 2}).")
    if abs(cfg.eps - HF_EPS) > 1e-12:
        raise ValueError(f"transformers' DeepseekV3 fixes the latent RMSNorms' epsilon at {HF_EPS}; this config has "
                         f"eps={cfg.eps}. Build it with eps={HF_EPS} to export.")
    return DeepseekV3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        moe_intermediate_size=cfg.expert_hidden, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads, n_shared_experts=cfg.n_shared,
        n_routed_experts=cfg.n_routed, routed_scaling_factor=float(cfg.routed_scaling_factor),
        kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim, qk_nope_head_dim=cfg.qk_nope_head_dim, n_group=cfg.n_groups,
        topk_group=cfg.topk_groups, num_experts_per_tok=cfg.top_k, first_k_dense_replace=cfg.first_k_dense,
        norm_topk_prob=bool(cfg.norm_topk_prob), hidden_act="silu", max_position_embeddings=cfg.context_length,
        rms_norm_eps=float(cfg.eps), tie_word_embeddings=bool(cfg.tie_embeddings),
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)}, rope_interleave=True,
        attention_bias=False, attention_dropout=0.0, num_nextn_predict_layers=cfg.mtp_depth,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _get(hf: dict, key: str, default=None):
    return hf[key] if hf.get(key) is not None else default


def from_transformers_config(hf: dict, mtp_depth: int | None = None):
    """A :class:`DeepSeekConfig` from a DeepseekV3 ``config.json`` (a dict). ValueError if it is not one we model.

    Course-only fields come from ``hf[COURSE_KEY]`` when present (our own exports), and must then agree
    with the transformers fields; otherwise they keep DeepSeekConfig's defaults.
    """
    DeepSeekConfig = _course_config_class()
    if not isinstance(hf, dict):
        raise ValueError(f"config.json must hold a JSON object, got {type(hf).__name__}.")
    if hf.get("model_type") != "deepseek_v3":
        raise ValueError(f"config.json describes model_type={hf.get('model_type')!r}, not 'deepseek_v3' "
                         f"(architectures={hf.get('architectures')}); import_hf reads DeepSeek-V3 checkpoints only.")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    checks = [
        (hf.get("hidden_act", "silu") == "silu", f"hidden_act={hf.get('hidden_act')!r} (only 'silu' is modelled)"),
        (bool(_get(hf, "rope_interleave", True)), "rope_interleave=false (the converters assume DeepSeek's "
                                                  "interleaved RoPE pairs)"),
        (not hf.get("attention_bias", False), "attention_bias=true (the course's MLA has no biases)"),
        (rope.get("rope_type", rope.get("type", "default")) == "default",
         f"rope_type={rope.get('rope_type', rope.get('type'))!r} (only the default RoPE is modelled, no YaRN)"),
        (_get(hf, "num_key_value_heads", hf.get("num_attention_heads")) == hf.get("num_attention_heads"),
         "num_key_value_heads != num_attention_heads"),
        (abs(float(_get(hf, "rms_norm_eps", HF_EPS)) - HF_EPS) < 1e-12,
         f"rms_norm_eps={hf.get('rms_norm_eps')} (transformers' latent norms use {HF_EPS})"),
    ]
    bad = [why for ok, why in checks if not ok]
    if bad:
        raise ValueError("config.json is a DeepseekV3 configuration the course's DeepSeekModel cannot represent: "
                         + "; ".join(bad) + ".")
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    depth = int(_get(hf, "num_nextn_predict_layers", 0)) if mtp_depth is None else mtp_depth
    try:
        fields = dict(
            vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"], d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"], kv_lora_rank=hf["kv_lora_rank"],
            qk_nope_head_dim=hf["qk_nope_head_dim"], qk_rope_head_dim=hf["qk_rope_head_dim"],
            v_head_dim=hf["v_head_dim"], q_lora_rank=hf.get("q_lora_rank"), d_ff=hf["intermediate_size"],
            first_k_dense=min(int(_get(hf, "first_k_dense_replace", 0)), hf["num_hidden_layers"]),
            n_routed=hf["n_routed_experts"], n_shared=hf["n_shared_experts"], top_k=hf["num_experts_per_tok"],
            expert_hidden=hf["moe_intermediate_size"], n_groups=_get(hf, "n_group", 1),
            topk_groups=_get(hf, "topk_group", 1), scoring="sigmoid",
            norm_topk_prob=bool(_get(hf, "norm_topk_prob", True)),
            routed_scaling_factor=float(_get(hf, "routed_scaling_factor", 1.0)), mtp_depth=depth,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)), rope_theta=theta,
            eps=float(_get(hf, "rms_norm_eps", HF_EPS)))
    except KeyError as err:
        raise ValueError(f"config.json lacks the DeepseekV3 field {err.args[0]!r}; is it a complete DeepSeek-V3 "
                         "configuration?") from None
    course = hf.get(COURSE_KEY)
    if course is not None:
        if not isinstance(course, dict):
            raise ValueError(f"config.json's {COURSE_KEY!r} must be an object, got {type(course).__name__}.")
        known = {f.name for f in dataclasses.fields(DeepSeekConfig)}
        unknown = sorted(set(course) - known)
        if unknown:
            raise ValueError(f"config.json's {COURSE_KEY!r} has fields DeepSeekConfig does not know: {unknown}.")
        clash = {k: (course[k], v) for k, v in fields.items()
                 if k in course and k != "mtp_depth" and _differs(course[k], v)}
        if clash:
            raise ValueError(f"config.json contradicts itself: {COURSE_KEY!r} vs the transformers fields "
                             f"(ours, theirs): {clash}; it was edited after export; export the model again.")
        fields.update({k: v for k, v in course.items() if k not in fields})
    try:
        return DeepSeekConfig(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.json gives an invalid DeepSeekConfig: {err}") from err


def _differs(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) > 1e-9 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return True
    return a != b


# --- weights ----------------------------------------------------------------------------------------------

def _block_to_hf(block, mla_cfg, prefix: str) -> dict:
    """One DeepSeekBlock's weights under transformers' DeepseekV3DecoderLayer names (prefix ends with '.')."""
    from utils.moe.deepseek import DeepSeekMoE
    out = {f"{prefix}input_layernorm.weight": block.input_layernorm.weight,
           f"{prefix}post_attention_layernorm.weight": block.post_attention_layernorm.weight}
    attn = state_dict_to_transformers(block.self_attn.state_dict(), mla_cfg)
    out.update({f"{prefix}self_attn.{k}": v for k, v in attn.items()})
    if isinstance(block.mlp, DeepSeekMoE):
        out.update({f"{prefix}mlp.{k}": v for k, v in block.mlp.transformers_state_dict().items()})
        if block.mlp.shared_experts is None:  # transformers always builds shared experts: width 0 here
            d = block.mlp.cfg.d_model
            out.update({f"{prefix}mlp.shared_experts.gate_proj.weight": block.mlp.gate.weight.new_zeros(0, d),
                        f"{prefix}mlp.shared_experts.up_proj.weight": block.mlp.gate.weight.new_zeros(0, d),
                        f"{prefix}mlp.shared_experts.down_proj.weight": block.mlp.gate.weight.new_zeros(d, 0)})
    else:
        out.update({f"{prefix}mlp.{n}.weight": getattr(block.mlp, n).weight for n in ("gate_proj", "up_proj",
                                                                                        "down_proj")})
    return out


def _block_from_hf(hf: dict, block, mla_cfg, prefix: str) -> dict:
    """The inverse of :func:`_block_to_hf`: the block's own state dict (keys without a prefix)."""
    from utils.moe.deepseek import DeepSeekMoE
    ours = {"input_layernorm.weight": hf[f"{prefix}input_layernorm.weight"],
            "post_attention_layernorm.weight": hf[f"{prefix}post_attention_layernorm.weight"]}
    attn = {k[len(prefix) + len("self_attn."):]: v for k, v in hf.items() if k.startswith(prefix + "self_attn.")}
    ours.update({f"self_attn.{k}": v for k, v in state_dict_from_transformers(attn, mla_cfg).items()})
    if isinstance(block.mlp, DeepSeekMoE):
        I = block.mlp.cfg.expert_hidden
        ours["mlp.gate.weight"] = hf[f"{prefix}mlp.gate.weight"]
        ours["mlp.e_score_correction_bias"] = hf[f"{prefix}mlp.gate.e_score_correction_bias"]
        gate_up, down = hf[f"{prefix}mlp.experts.gate_up_proj"], hf[f"{prefix}mlp.experts.down_proj"]
        for e in range(block.mlp.cfg.n_routed):
            ours[f"mlp.experts.{e}.gate_proj.weight"] = gate_up[e, :I]
            ours[f"mlp.experts.{e}.up_proj.weight"] = gate_up[e, I:]
            ours[f"mlp.experts.{e}.down_proj.weight"] = down[e]
        if block.mlp.shared_experts is not None:
            for n in ("gate_proj", "up_proj", "down_proj"):
                ours[f"mlp.shared_experts.{n}.weight"] = hf[f"{prefix}mlp.shared_experts.{n}.weight"]
    else:
        for n in ("gate_proj", "up_proj", "down_proj"):
            ours[f"mlp.{n}.weight"] = hf[f"{prefix}mlp.{n}.weight"]
    return ours


def _check_model(model):
    from utils.model import DeepSeekModel
    if not isinstance(model, DeepSeekModel):
        raise ValueError(f"export_hf expects a utils.model.DeepSeekModel, got {type(model).__name__}.")


def _tied(model) -> bool:
    return model.lm_head.weight is model.embed_tokens.weight


def _no_overlap(sd: dict) -> dict:
    """Detached, contiguous copies on the CPU (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def to_transformers_state_dict(model) -> dict:
    """``model``'s main weights under ``DeepseekV3ForCausalLM.state_dict()`` names (no MTP; no lm_head if tied)."""
    _check_model(model)
    return _no_overlap(_hf_names(model, main=True))


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    """eh_proj (d, 2d): columns [a; b] -> [b; a] (ours: hidden first; DeepSeek's checkpoint: embedding first)."""
    d = w.shape[1] // 2
    return torch.cat([w[:, d:], w[:, :d]], dim=1)


def mtp_state_dict(model) -> dict:
    """The MTP modules under DeepSeek-V3's checkpoint names, module k (1-based) at layer ``n_layers + k - 1``."""
    _check_model(model)
    return _no_overlap(_hf_names(model, main=False))


def _hf_names(model, main: bool) -> dict:
    """The main weights (``main``) or the MTP weights under their checkpoint names (tensors, not copies)."""
    mla_cfg = model.cfg.mla_config()
    if main:
        sd = {"model.embed_tokens.weight": model.embed_tokens.weight, "model.norm.weight": model.norm.weight}
        for i, block in enumerate(model.layers):
            sd.update(_block_to_hf(block, mla_cfg, f"model.layers.{i}."))
        if not _tied(model):
            sd["lm_head.weight"] = model.lm_head.weight
        return sd
    sd = {}
    for k, module in enumerate(model.mtp):
        p = f"model.layers.{model.cfg.n_layers + k}."
        sd.update({p + "enorm.weight": module.enorm.weight, p + "hnorm.weight": module.hnorm.weight,
                   p + "eh_proj.weight": _swap_halves(module.eh_proj.weight),
                   p + "shared_head.norm.weight": module.shared_head["norm"].weight})
        sd.update(_block_to_hf(module.block, mla_cfg, p))
    return sd


def _mtp_from_hf(hf: dict, module, mla_cfg, prefix: str) -> dict:
    ours = {"enorm.weight": hf[prefix + "enorm.weight"], "hnorm.weight": hf[prefix + "hnorm.weight"],
            "eh_proj.weight": _swap_halves(hf[prefix + "eh_proj.weight"]),
            "shared_head.norm.weight": hf[prefix + "shared_head.norm.weight"]}
    ours.update({f"block.{k}": v for k, v in _block_from_hf(hf, module.block, mla_cfg, prefix).items()})
    return ours


# --- export -----------------------------------------------------------------------------------------------

def export_hf(model, directory, overwrite: bool = False) -> Path:
    """Write ``config.json``, ``model.safetensors`` (+ ``mtp.safetensors`` with MTP modules) to ``directory``.

    Refuses a non-empty ``directory`` unless ``overwrite=True`` (:class:`ExportDirectoryNotEmpty`, a
    ValueError). Everything is written to a temporary directory next to it and renamed into place, so
    an interrupted export never leaves a half-written directory (nor destroys the old one).
    Returns the directory's path.
    """
    from safetensors.torch import save_file
    _check_model(model)
    hf_cfg = to_transformers_config(model.cfg)  # ValueError first, before anything touches the disk
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory; choose another path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ExportDirectoryNotEmpty(f"{target} is not empty; pass overwrite=True to replace its contents, or "
                                      "choose an empty or new directory.")
    main, mtp = to_transformers_state_dict(model), mtp_state_dict(model)
    dtype = model.embed_tokens.weight.dtype
    hf_cfg.dtype = str(dtype).removeprefix("torch.")
    hf_cfg.architectures = ["DeepseekV3ForCausalLM"]
    config = json.loads(hf_cfg.to_json_string())
    config[COURSE_KEY] = dataclasses.asdict(model.cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(main, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        if mtp:
            save_file(unfuse_experts(mtp), str(tmp / MTP_FILE), metadata={"format": "pt", "layout": "deepseek_v3_mtp"})
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "dir")  # move the old directory aside, then the new one in
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old / "dir", target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- import -----------------------------------------------------------------------------------------------

def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); it may be "
                         "truncated or of another format: export the model again.") from err


_PER_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def fuse_experts(tensors: dict) -> dict:
    """DeepSeek's checkpoint layout (one ``mlp.experts.{e}.{gate,up,down}_proj.weight`` per expert, what
    transformers' ``save_pretrained`` and DeepSeek-V3's release write) -> transformers' fused
    ``mlp.experts.gate_up_proj`` (E, 2I, d) and ``mlp.experts.down_proj`` (E, d, I). Other keys unchanged.
    ValueError if a layer's experts are incomplete or of different shapes."""
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out = {}
    for key, value in tensors.items():
        m = _PER_EXPERT.match(key)
        if m:
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = value
        else:
            out[key] = value
    for prefix, experts in groups.items():
        E = max(experts) + 1
        gaps = [f"{e}.{n}" for e in range(E) for n in ("gate_proj", "up_proj", "down_proj")
                if n not in experts.get(e, {})]
        if gaps:
            raise ValueError(f"{prefix}: per-expert weights incomplete, missing {gaps[:6]}; nothing was loaded.")
        if prefix + ".gate_up_proj" in out or prefix + ".down_proj" in out:
            raise ValueError(f"{prefix} holds both fused and per-expert weights; the checkpoint is inconsistent.")
        try:
            out[prefix + ".gate_up_proj"] = torch.stack([torch.cat([experts[e]["gate_proj"], experts[e]["up_proj"]])
                                                         for e in range(E)])
            out[prefix + ".down_proj"] = torch.stack([experts[e]["down_proj"] for e in range(E)])
        except RuntimeError as err:
            raise ValueError(f"{prefix}: experts of different shapes ({err}); nothing was loaded.") from err
    return out


def unfuse_experts(tensors: dict) -> dict:
    """The inverse of :func:`fuse_experts`: DeepSeek-V3's per-expert checkpoint names."""
    out = {}
    for key, value in tensors.items():
        if key.endswith(".mlp.experts.gate_up_proj"):
            base, I = key[:-len("gate_up_proj")], value.shape[1] // 2
            for e in range(value.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = value[e, :I].clone()
                out[f"{base}{e}.up_proj.weight"] = value[e, I:].clone()
        elif key.endswith(".mlp.experts.down_proj"):
            base = key[:-len("down_proj")]
            for e in range(value.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = value[e].clone()
        else:
            out[key] = value
    return out


def _check_tensors(found: dict, expected: dict, where: str) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shapes = [f"{k}: {tuple(found[k].shape)} instead of {tuple(expected[k].shape)}"
              for k in sorted(set(found) & set(expected)) if tuple(found[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        def show(items):
            return f"{items[:6]}{' ...' if len(items) > 6 else ''} ({len(items)})"
        parts = ([f"missing {show(missing)}"] if missing else []) + ([f"unexpected {show(extra)}"] if extra else []) \
            + ([f"mis-shaped {show(shapes)}"] if shapes else [])
        raise ValueError(f"{where} does not fit its config.json: " + "; ".join(parts) +
                         ". Was the directory written for another configuration? Nothing was loaded.")


def import_hf(directory):
    """A :class:`DeepSeekModel` (eval mode, fp32 or the stored dtype) from an :func:`export_hf` directory.

    Also reads a directory saved by ``DeepseekV3ForCausalLM.save_pretrained`` (single ``model.safetensors``).
    MTP modules come from ``mtp.safetensors`` (or layers ``num_hidden_layers + k`` of ``model.safetensors``);
    if config.json announces MTP layers but no MTP weights exist, the model is built without MTP and a
    warning says so. Every other mismatch raises ValueError before anything is loaded.
    """
    from utils.model import DeepSeekModel
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; pass the directory export_hf wrote.")
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{root} has no config.json; is it an export_hf / save_pretrained directory?")
    try:
        hf = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err
    cfg = from_transformers_config(hf)  # model_type and every supported field checked here
    if not (root / MODEL_FILE).is_file():
        others = sorted(p.name for p in root.glob("*.safetensors*")) + sorted(p.name for p in root.glob("*.bin"))
        raise ValueError(f"{root} has no {MODEL_FILE} (found {others}); import_hf reads single-file exports.")
    tensors = _read_safetensors(root / MODEL_FILE)
    if (root / MTP_FILE).is_file():
        mtp_tensors = _read_safetensors(root / MTP_FILE)
        clash = sorted(set(mtp_tensors) & set(tensors))
        if clash:
            raise ValueError(f"{MTP_FILE} and {MODEL_FILE} both hold {clash[:4]}; the directory is inconsistent.")
        tensors = {**tensors, **mtp_tensors}
    tensors = fuse_experts(tensors)
    n = cfg.n_layers
    mtp_layers = sorted({int(k.split(".")[2]) for k in tensors
                         if k.startswith("model.layers.") and k.split(".")[2].isdigit() and int(k.split(".")[2]) >= n})
    depth = len(mtp_layers)
    if mtp_layers and mtp_layers != list(range(n, n + depth)):
        raise ValueError(f"MTP layers must be numbered {n}, {n + 1}, ... after the {n} main layers; "
                         f"found {mtp_layers}.")
    if depth != cfg.mtp_depth:
        if depth == 0:
            warnings.warn(f"config.json announces {cfg.mtp_depth} MTP layer(s) (num_nextn_predict_layers) but the "
                          f"directory holds no MTP weights ({MTP_FILE}); building the model without MTP modules.",
                          stacklevel=2)
        else:
            raise ValueError(f"config.json announces num_nextn_predict_layers={cfg.mtp_depth} but the weights hold "
                             f"{depth} MTP layer(s) ({mtp_layers}); the directory is inconsistent.")
        cfg = dataclasses.replace(cfg, mtp_depth=depth)
    if cfg.tie_embeddings and "lm_head.weight" in tensors:
        head, emb = tensors.pop("lm_head.weight"), tensors.get("model.embed_tokens.weight")
        if emb is None or head.shape != emb.shape or not torch.equal(head, emb):
            raise ValueError("tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight.")
    dtype = tensors["model.embed_tokens.weight"].dtype if "model.embed_tokens.weight" in tensors else torch.float32
    model = DeepSeekModel(cfg)  # course sizes: cheap; its own weights give every expected name and shape
    _check_tensors(tensors, _expected_shapes(model), str(root))
    model = model.to(dtype)
    mla_cfg = cfg.mla_config()
    ours = {"embed_tokens.weight": tensors["model.embed_tokens.weight"], "norm.weight": tensors["model.norm.weight"],
            "lm_head.weight": tensors["model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"]}
    for i, block in enumerate(model.layers):
        ours.update({f"layers.{i}.{k}": v for k, v in
                     _block_from_hf(tensors, block, mla_cfg, f"model.layers.{i}.").items()})
    for k, module in enumerate(model.mtp):
        ours.update({f"mtp.{k}.{key}": v for key, v in
                     _mtp_from_hf(tensors, module, mla_cfg, f"model.layers.{n + k}.").items()})
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(ours)), sorted(set(ours) - set(want))
    if missing or extra:  # a DeepSeekModel state-dict name the converters do not know about: a bug, not bad input
        raise ValueError(f"internal: converted state dict does not match DeepSeekModel: missing {missing[:6]}, "
                         f"unexpected {extra[:6]}.")
    model.load_state_dict({k: v.to(want[k].dtype) for k, v in ours.items()}, strict=True)
    return model.eval()


def _expected_shapes(model) -> dict:
    """Every tensor name and shape (meta tensors) an export of ``model`` holds, main and MTP."""
    return {k: torch.empty(v.shape, device="meta") for k, v in {**_hf_names(model, True),
                                                                 **_hf_names(model, False)}.items()}
