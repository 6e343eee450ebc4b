"""Offline GPT-2 BPE tokenizer and a compact vocabulary (Lecture 03).

:func:`get_tokenizer` builds tiktoken's ``gpt2`` encoding from the file shipped in
``data/gpt2`` (no download). :class:`CompactVocab` maps the few thousand GPT-2 ids a small
corpus uses to dense ids 0..V-1, so a CPU model does not pay for 50,257 output rows.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

import tiktoken
import tiktoken.load

from utils import DATA_DIR

GPT2_BPE_FILE = DATA_DIR / "gpt2" / "r50k_base.tiktoken"
GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# tiktoken_ext.openai_public.r50k_pat_str, copied so that no tiktoken plugin is needed.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
RESTORE_HINT = "restore it with `git checkout -- data/gpt2` (or re-clone the course repository)"


@lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's BPE as a tiktoken ``Encoding``, identical to ``tiktoken.get_encoding("gpt2")`` (Lecture 03).

    >>> get_tokenizer().encode("Hello, DeepSeek!")
    [15496, 11, 10766, 4653, 988, 0]
    """
    if not GPT2_BPE_FILE.is_file():
        raise FileNotFoundError(f"Tokenizer file {GPT2_BPE_FILE} is missing: {RESTORE_HINT}.")
    try:
        ranks = tiktoken.load.load_tiktoken_bpe(str(GPT2_BPE_FILE), expected_hash=GPT2_BPE_SHA256)
    except ValueError as err:  # tiktoken raises ValueError on a hash mismatch
        raise ValueError(f"Tokenizer file {GPT2_BPE_FILE} is corrupted ({err}): {RESTORE_HINT}.") from err
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={END_OF_TEXT: END_OF_TEXT_ID}, explicit_n_vocab=50257)


class CompactVocab:
    """Dense ids for the GPT-2 ids a corpus uses (Lecture 03).

    Dense id ``0`` is reserved for ids the vocabulary has never seen: :meth:`to_dense` maps
    them to ``UNK`` (or raises with ``strict=True``), and :meth:`to_gpt2` maps ``UNK`` back to
    ``unk_gpt2_id`` (``<|endoftext|>`` by default). :class:`CompactTokenizer` decodes ``UNK`` as
    the visible marker ``<|unk|>``, so it cannot be mistaken for the end of a story.
    """

    UNK = 0

    def __init__(self, gpt2_ids: Iterable[int], unk_gpt2_id: int = END_OF_TEXT_ID):
        used = sorted(set(int(i) for i in gpt2_ids))
        if not used:
            raise ValueError("CompactVocab needs at least one token id; pass the ids of your corpus.")
        if used[0] < 0 or used[-1] >= 50257:
            raise ValueError(f"GPT-2 ids lie in [0, 50257); got ids from {used[0]} to {used[-1]}.")
        self.unk_gpt2_id = unk_gpt2_id
        self.gpt2_ids = [unk_gpt2_id] + used  # dense id -> GPT-2 id
        self._dense = {g: i for i, g in enumerate(used, start=1)}

    def __len__(self) -> int:
        return len(self.gpt2_ids)

    def __contains__(self, gpt2_id: int) -> bool:
        return gpt2_id in self._dense

    def to_dense(self, gpt2_ids: Sequence[int], strict: bool = False) -> list[int]:
        """Map GPT-2 ids to dense ids; unseen ids become ``UNK`` (``strict=True`` raises instead)."""
        if strict:
            missing = sorted({g for g in gpt2_ids if g not in self._dense})
            if missing:
                raise ValueError(f"{len(missing)} ids are not in this vocabulary (first: {missing[:5]}); "
                                 "build the vocabulary from text that contains them, or use strict=False.")
        return [self._dense.get(g, self.UNK) for g in gpt2_ids]

    def to_gpt2(self, dense_ids: Sequence[int]) -> list[int]:
        """Map dense ids back to GPT-2 ids."""
        n = len(self.gpt2_ids)
        bad = [i for i in dense_ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"dense ids must lie in [0, {n}); got {bad[:5]}.")
        return [self.gpt2_ids[i] for i in dense_ids]


class CompactTokenizer:
    """Text <-> dense ids: GPT-2 BPE followed by a :class:`CompactVocab` (Lecture 03)."""

    def __init__(self, vocab: CompactVocab, encoding: tiktoken.Encoding | None = None):
        self.vocab = vocab
        self.encoding = encoding or get_tokenizer()

    @classmethod
    def from_text(cls, text: str) -> "CompactTokenizer":
        """Build the vocabulary from every GPT-2 id that ``text`` uses."""
        encoding = get_tokenizer()
        return cls(CompactVocab(encoding.encode(text, allowed_special={END_OF_TEXT})), encoding)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return self.vocab.to_dense(self.encoding.encode(text, allowed_special={END_OF_TEXT}))

    UNK_TEXT = "<|unk|>"

    def decode(self, dense_ids: Sequence[int]) -> str:
        """Dense ids -> text; each ``UNK`` id shows as ``<|unk|>``."""
        dense_ids = [int(i) for i in dense_ids]
        pieces, run = [], []
        for i in dense_ids + [CompactVocab.UNK]:  # a final UNK flushes the last run
            if i == CompactVocab.UNK:
                pieces.append(self.encoding.decode(self.vocab.to_gpt2(run)))
                run = []
            else:
                run.append(i)
        return self.UNK_TEXT.join(pieces)
