"""The key-value cache (Lecture 09) and its size for MHA, MQA and GQA (Lectures 09-11).

At generation time a causal model only needs the newest token's query; the keys and values of
the earlier tokens do not change, so each attention layer keeps them and appends one row per
new token instead of recomputing them.

- :class:`LayerKVCache`: one layer's K and V buffers, each (B, n_kv_heads, capacity, d_h),
  allocated once and filled in place; ``position`` counts the tokens stored.
- :class:`KVCache`: one :class:`LayerKVCache` per transformer block, built for a model with
  :meth:`KVCache.for_model`; ``GPTModel.forward(idx, cache=...)`` and
  ``utils.generation.generate(..., use_cache=True)`` use it. ``truncate(length)`` (on every
  cache class) drops the tokens after the first ``length``: speculative decoding (Lecture 25)
  takes back a rejected draft that way.
- :func:`kv_cache_bytes`: memory of the cache, layers * batch * tokens * n_kv_heads * d_h * 2 (K
  and V) * bytes per element (DeepSeek-V2 Table 1), for a :class:`utils.configs.ModelSpec`, a
  :class:`utils.gpt.GPTConfig` or a bare :class:`AttentionShape`.

Multi-head latent attention (Lectures 12-13) caches a latent instead of K and V:
:class:`LatentCache` is its per-layer cache (the same ``position``/``reset``/``batch_size``/
``capacity``/``nbytes``), and :func:`kv_elements_per_token` counts d_c (+ d_h^R) per token and
layer for an MLA :class:`utils.configs.ModelSpec` or a :class:`LatentShape` (576 for DeepSeek-V3).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn


def _check_truncate(length, position: int) -> None:
    """ValueError unless ``0 <= length <= position`` (an int): what ``truncate`` accepts (Lecture 25)."""
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= position:
        raise ValueError(f"truncate(length) keeps the first `length` cached tokens, so length must be an integer "
                         f"in [0, position={position}], got {length!r}; the cache cannot grow by truncation.")


class LayerKVCache:
    """One attention layer's keys and values, preallocated and appended in place (Lecture 09).

    ``k`` and ``v`` are (B, n_kv_heads, capacity, d_h) buffers; the first ``position`` slots along
    the token axis hold the tokens seen so far. :meth:`append` writes new rows at ``position``
    and returns views of everything stored: no tensor is concatenated or reallocated.
    ``n_kv_heads`` is ``n_heads`` for MHA, 1 for MQA (Lecture 10), the number of groups for GQA
    (Lecture 11).
    """

    def __init__(self, batch_size: int, n_kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        for name, value in (("batch_size", batch_size), ("n_kv_heads", n_kv_heads),
                            ("capacity", capacity), ("head_dim", head_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LayerKVCache: {name} must be a positive integer, got {value!r}.")
        shape = (batch_size, n_kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (B, n_kv_heads, capacity, d_h)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.position = 0  # tokens stored so far; the next token goes to slot `position`

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def keys(self) -> torch.Tensor:
        """The stored keys, (B, n_kv_heads, position, d_h): a view, not a copy."""
        return self.k[:, :, :self.position]

    @property
    def values(self) -> torch.Tensor:
        """The stored values, (B, n_kv_heads, position, d_h): a view, not a copy."""
        return self.v[:, :, :self.position]

    def reset(self) -> None:
        """Forget the stored tokens (the buffers are kept and overwritten by the next appends)."""
        self.position = 0

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` tokens and forget the rest (position becomes ``length``; Lecture 25).

        Speculative decoding appends a drafted token's keys and values before knowing whether the
        draft is accepted; on a rejection it truncates them away. Nothing is copied: the next
        append overwrites the slots from ``length`` on.
        """
        _check_truncate(length, self.position)
        self.position = length

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k_new``, ``v_new`` (B, n_kv_heads, T, d_h) at ``position`` and advance it by T.

        Returns all stored keys and values, (B, n_kv_heads, position + T, d_h) each.
        """
        if k_new.shape != v_new.shape:
            raise ValueError(f"keys {tuple(k_new.shape)} and values {tuple(v_new.shape)} must have the same shape.")
        if k_new.dim() != 4:
            raise ValueError(f"append expects (batch, n_kv_heads, tokens, head_dim), got {tuple(k_new.shape)}.")
        B, G, T, D = k_new.shape
        if B != self.batch_size:
            raise ValueError(f"the cache was built for batch size {self.batch_size}, got a batch of {B}; "
                             f"build a cache with batch_size={B} (KVCache.for_model(model, batch_size={B})).")
        if (G, D) != (self.k.shape[1], self.k.shape[3]):
            raise ValueError(f"the cache holds {self.k.shape[1]} K/V heads of width {self.k.shape[3]}, got "
                             f"{G} of width {D}; build the cache for this attention layer (KVCache.for_model).")
        if self.position + T > self.capacity:
            raise ValueError(f"the cache is full: it holds {self.position} of {self.capacity} tokens and "
                             f"cannot take {T} more; build it with a larger capacity, or call reset() "
                             f"and prefill the last tokens again (as generate does past the context).")
        if k_new.dtype != self.k.dtype or k_new.device != self.k.device:
            raise ValueError(f"the cache stores {self.k.dtype} on {self.k.device}, got {k_new.dtype} on "
                             f"{k_new.device}; build it with the model's dtype and device.")
        end = self.position + T
        self.k[:, :, self.position:end] = k_new
        self.v[:, :, self.position:end] = v_new
        self.position = end
        return self.keys, self.values

    def nbytes(self) -> int:
        """Bytes held by the two buffers (allocated at full capacity, however much is filled)."""
        return self.k.numel() * self.k.element_size() * 2

    def __repr__(self) -> str:
        B, G, C, D = self.k.shape
        return (f"LayerKVCache(batch_size={B}, n_kv_heads={G}, capacity={C}, head_dim={D}, "
                f"position={self.position}, dtype={self.k.dtype})")


class LatentCache:
    """One MLA layer's cache: the latent C_KV only, a (B, capacity, d_latent) buffer (Lecture 13).

    What :class:`utils.mla.MultiHeadLatentAttention` appends to instead of K and V: one row of
    d_latent numbers per token, shared by every head (each head expands it with its own W_uK,h,
    W_uV,h, or the absorbed path scores against it directly). Same protocol as :class:`LayerKVCache`.
    """

    def __init__(self, batch_size: int, capacity: int, d_latent: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        for name, value in (("batch_size", batch_size), ("capacity", capacity), ("d_latent", d_latent)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LatentCache: {name} must be a positive integer, got {value!r}.")
        self.c = torch.zeros(batch_size, capacity, d_latent, dtype=dtype, device=device)  # (B, capacity, d_c)
        self.position = 0

    @property
    def batch_size(self) -> int:
        return self.c.shape[0]

    @property
    def capacity(self) -> int:
        return self.c.shape[1]

    @property
    def latent(self) -> torch.Tensor:
        """The stored latents, (B, position, d_latent): a view, not a copy."""
        return self.c[:, :self.position]

    def reset(self) -> None:
        """Forget the stored tokens (the buffer is kept)."""
        self.position = 0

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` latents, forget the rest (position becomes ``length``; Lecture 25)."""
        _check_truncate(length, self.position)
        self.position = length

    def append(self, c_new: torch.Tensor) -> torch.Tensor:
        """Store ``c_new`` (B, T, d_latent) at ``position``, advance by T; return all stored (B, position, d_latent)."""
        if c_new.dim() != 3 or c_new.shape[0] != self.batch_size or c_new.shape[2] != self.c.shape[2]:
            raise ValueError(f"the cache holds latents (batch {self.batch_size}, tokens, d_latent {self.c.shape[2]}), "
                             f"got shape {tuple(c_new.shape)}; build it for this layer and batch "
                             "(KVCache.for_model(model, batch_size=...)).")
        if self.position + c_new.shape[1] > self.capacity:
            raise ValueError(f"the cache is full: it holds {self.position} of {self.capacity} tokens and cannot "
                             f"take {c_new.shape[1]} more; build it with a larger capacity or call reset().")
        if c_new.dtype != self.c.dtype or c_new.device != self.c.device:
            raise ValueError(f"the cache stores {self.c.dtype} on {self.c.device}, got {c_new.dtype} on "
                             f"{c_new.device}; build it with the model's dtype and device.")
        end = self.position + c_new.shape[1]
        self.c[:, self.position:end] = c_new
        self.position = end
        return self.latent

    def nbytes(self) -> int:
        """Bytes of the buffer (allocated at full capacity): B * capacity * d_latent * element size."""
        return self.c.numel() * self.c.element_size()

    def __repr__(self) -> str:
        B, C, D = self.c.shape
        return f"LatentCache(batch_size={B}, capacity={C}, d_latent={D}, position={self.position}, dtype={self.c.dtype})"


def supports_cache(attention: nn.Module) -> bool:
    """True if ``attention`` can build a per-layer cache (``new_cache``) and takes ``cache=`` in forward."""
    if not callable(getattr(attention, "new_cache", None)):
        return False
    return "cache" in inspect.signature(attention.forward).parameters


class KVCache:
    """A model's KV cache: one per-layer cache per transformer block (Lecture 09).

    ``layers[i]`` is what block i's attention appends to. ``position`` is the number of tokens
    stored (the same in every layer), which ``GPTModel.forward(idx, cache=...)`` uses as the
    position id of the first new token. One cache can serve many generations: :meth:`reset`
    sets every layer's position back to 0 (``generate`` calls it before each prefill).
    """

    def __init__(self, layers: list):
        if not layers:
            raise ValueError("KVCache needs at least one layer cache.")
        self.layers = list(layers)

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int = 1, capacity: int | None = None,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "KVCache":
        """Allocate a cache for every block of ``model`` (a ``GPTModel``).

        ``capacity`` defaults to ``model.cfg.context_length`` (with learned absolute positions a
        longer cache could never be used). ``dtype`` and ``device`` default to the model's.
        Each block's attention builds its own layer cache with ``attn.new_cache(...)``, so MHA,
        MQA and GQA get (B, n_kv_heads, capacity, d_h) buffers with their own n_kv_heads.
        """
        context_length = model.cfg.context_length
        capacity = context_length if capacity is None else capacity
        if not isinstance(capacity, int) or not 1 <= capacity <= context_length:
            raise ValueError(f"capacity must be an integer in [1, context_length={context_length}], got "
                             f"{capacity!r}; positions past the context have no position embedding.")
        for i, block in enumerate(model.blocks):
            if not supports_cache(block.attn):
                raise ValueError(f"block {i}'s attention ({type(block.attn).__name__}) has no KV-cache support: "
                                 "it needs new_cache(...) and forward(x, cache=None) (see "
                                 "utils.attention.GroupedQueryAttention); generate with use_cache=False.")
        param = next(model.parameters())
        dtype = dtype or param.dtype
        device = device if device is not None else param.device
        return cls([block.attn.new_cache(batch_size, capacity, dtype=dtype, device=device)
                    for block in model.blocks])

    @property
    def position(self) -> int:
        """Tokens stored; every layer must agree (a layer skipped in a forward pass would not)."""
        positions = {layer.position for layer in self.layers}
        if len(positions) != 1:
            raise RuntimeError(f"the layers of the cache hold different numbers of tokens {sorted(positions)}: "
                               "a forward pass skipped some layers; call reset() and prefill again.")
        return positions.pop()

    @property
    def batch_size(self) -> int:
        return self.layers[0].batch_size

    @property
    def capacity(self) -> int:
        return min(layer.capacity for layer in self.layers)

    def reset(self) -> None:
        """Empty every layer (position 0); the buffers are reused."""
        for layer in self.layers:
            layer.reset()

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` tokens in every layer (position becomes ``length``; Lecture 25).

        What speculative decoding does after a rejected draft: the draft's keys and values (or
        latents) were appended to every layer during verification and are dropped here.
        """
        _check_truncate(length, self.position)
        for layer in self.layers:
            layer.truncate(length)

    def nbytes(self) -> int:
        """Bytes allocated by all layers (at full capacity)."""
        return sum(layer.nbytes() for layer in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return f"KVCache({len(self.layers)} layers, position={self.position}, first layer: {self.layers[0]!r})"


# --- size -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionShape:
    """What the size of a K/V cache depends on (Lectures 09-11).

    ``n_kv_heads``: K/V heads per layer; None means one per query head (MHA), 1 is MQA, anything
    in between GQA (the number of groups). E.g. the lecture's 30B model:
    ``AttentionShape(n_layers=48, n_heads=56, head_dim=128)``.
    """

    n_layers: int
    n_heads: int
    head_dim: int
    n_kv_heads: int | None = None

    def __post_init__(self):
        for name in ("n_layers", "n_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"AttentionShape.{name} must be positive, got {getattr(self, name)}.")
        kv = self.kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={kv}; choose n_kv_heads "
                             f"among {[g for g in range(1, self.n_heads + 1) if self.n_heads % g == 0]}.")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def kind(self) -> str:
        """"MHA" (one K/V head per query head), "MQA" (one shared) or "GQA" (groups)."""
        return "MHA" if self.kv_heads == self.n_heads else "MQA" if self.kv_heads == 1 else "GQA"

    @classmethod
    def of(cls, config) -> "AttentionShape":
        """The shape of a ``ModelSpec`` (``n_kv_heads``), a ``GPTConfig`` (``n_kv_groups``) or an AttentionShape."""
        if isinstance(config, cls):
            return config
        if getattr(config, "mla", None) is not None:
            raise ValueError(f"{getattr(config, 'name', type(config).__name__)} uses multi-head latent attention, "
                             "which caches a latent, not K/V heads: kv_elements_per_token and kv_cache_bytes "
                             "count it (Lecture 13); for the MHA it replaces pass an AttentionShape "
                             "(DeepSeek-V3 MHA: n_layers=61, n_heads=128, head_dim=128).")
        kv = getattr(config, "n_kv_heads", None)
        if kv is None:
            kv = getattr(config, "n_kv_groups", None)
        return cls(config.n_layers, config.n_heads, config.d_model // config.n_heads, kv)


@dataclass(frozen=True)
class LatentShape:
    """What the size of an MLA cache depends on (Lecture 13): layers, the latent width d_c and the
    decoupled RoPE key width d_h^R (0 without RoPE; Lecture 17). Not the number of heads."""

    n_layers: int
    d_latent: int
    rope_dim: int = 0

    def __post_init__(self):
        for name in ("n_layers", "d_latent"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"LatentShape.{name} must be a positive integer, got {getattr(self, name)!r}.")
        if not isinstance(self.rope_dim, int) or self.rope_dim < 0:
            raise ValueError(f"LatentShape.rope_dim must be a non-negative integer (0 without RoPE), "
                             f"got {self.rope_dim!r}.")


def kv_elements_per_token(config) -> int:
    """Numbers stored in the cache per token, over all layers (DeepSeek-V2 Table 1).

    MHA 2 * n_h * d_h * L; GQA 2 * n_g * d_h * L; MQA 2 * d_h * L (2: one key and one value).
    MLA (Lecture 13; a :class:`LatentShape` or a ``ModelSpec`` with ``mla``): (d_c + d_h^R) * L,
    the latent and the shared RoPE key, whatever the number of heads: DeepSeek-V3 576 * 61.
    """
    if isinstance(config, LatentShape):
        return (config.d_latent + config.rope_dim) * config.n_layers
    mla = getattr(config, "mla", None)
    if mla is not None:
        return (mla.kv_lora_rank + mla.qk_rope_head_dim) * config.n_layers
    shape = AttentionShape.of(config)
    return 2 * shape.kv_heads * shape.head_dim * shape.n_layers


def kv_cache_bytes(config, seq_len: int, batch: int = 1, dtype: torch.dtype | int | float = torch.float16) -> int:
    """Bytes of K/V cache for ``batch`` sequences of ``seq_len`` tokens (Lectures 09-11).

    layers * batch * seq_len * n_kv_heads * d_h * 2 (K and V) * bytes per element, where
    n_kv_heads is n_heads (MHA), 1 (MQA) or the number of groups (GQA); for MLA layers * batch *
    seq_len * (d_c + d_h^R) * bytes (Lecture 13). ``config`` is a ``utils.configs.ModelSpec``, a
    ``utils.gpt.GPTConfig``, an :class:`AttentionShape` or a :class:`LatentShape`; ``dtype``
    a torch dtype (fp16/bf16: 2 bytes) or a number of bytes per element (1 for FP8).
    Examples: the lecture's 30B model (48 layers, 56 x 128 = 7168 wide, 1024 tokens, batch 128,
    fp16) needs 180.4e9 bytes; Llama-3-8B 131,072 bytes per token.
    """
    if isinstance(dtype, torch.dtype):
        per_element = torch.empty((), dtype=dtype).element_size()
    elif isinstance(dtype, (int, float)) and not isinstance(dtype, bool) and dtype > 0:
        per_element = dtype
    else:
        raise ValueError(f"dtype must be a torch dtype or a positive number of bytes per element, got {dtype!r}.")
    for name, value in (("seq_len", seq_len), ("batch", batch)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    total = kv_elements_per_token(config) * seq_len * batch * per_element
    return int(total) if float(total).is_integer() else total


def format_bytes(n: float, binary: bool = False) -> str:
    """'180.4 GB' (powers of 1000) or, with ``binary``, '4.5 GiB' (powers of 1024)."""
    base, units = (1024, ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]) if binary else (1000, ["B", "kB", "MB", "GB", "TB", "PB"])
    value, unit = float(n), units[0]
    for unit in units:
        if abs(value) < base or unit == units[-1]:
            break
        value /= base
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
