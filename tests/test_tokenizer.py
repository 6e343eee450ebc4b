import hashlib
import shutil

import pytest
import tiktoken

from utils import DATA_DIR, tokenizer
from utils.tokenizer import CompactTokenizer, CompactVocab, get_tokenizer

TIKTOKEN_URLS = {  # the files tiktoken downloads for get_encoding("gpt2") (data-gym format)
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


def test_hello_deepseek():
    assert get_tokenizer().encode("Hello, DeepSeek!") == [15496, 11, 10766, 4653, 988, 0]


def test_identical_to_tiktoken_gpt2(tmp_path, monkeypatch):
    """tiktoken builds 'gpt2' itself from the data-gym files in its cache: an independent oracle."""
    for name, url in TIKTOKEN_URLS.items():
        shutil.copy(DATA_DIR / "gpt2" / name, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    reference = tiktoken.get_encoding("gpt2")
    ours = get_tokenizer()
    assert ours._mergeable_ranks == reference._mergeable_ranks
    assert ours._special_tokens == reference._special_tokens and ours.n_vocab == reference.n_vocab == 50257
    text = "Hello, world. Is this-- a test?<|endoftext|> It's 2024:\n\n  naïve café!"
    assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    assert ours.encode("Hello, world. Is this-- a test?<|endoftext|>", allowed_special="all") == [
        15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30, 50256]


@pytest.fixture
def bpe_file(tmp_path, monkeypatch):
    """Point the tokenizer at a file in tmp_path (written by the test), with a fresh cache."""
    path = tmp_path / "r50k_base.tiktoken"
    monkeypatch.setattr(tokenizer, "GPT2_BPE_FILE", path)
    get_tokenizer.cache_clear()
    yield path
    get_tokenizer.cache_clear()


def test_missing_file_names_it(bpe_file):
    with pytest.raises(FileNotFoundError, match="r50k_base.tiktoken.*git checkout"):
        get_tokenizer()


def test_corrupted_file_names_it(bpe_file):
    bpe_file.write_bytes((DATA_DIR / "gpt2" / "r50k_base.tiktoken").read_bytes()[:-10])
    with pytest.raises(ValueError, match="corrupted.*git checkout"):
        get_tokenizer()


def test_compact_vocab_round_trip_and_unknown_rule():
    vocab = CompactVocab([464, 3797, 464, 50256])
    assert len(vocab) == 4  # UNK + 3 distinct ids
    dense = vocab.to_dense([3797, 464, 999])
    assert dense[2] == CompactVocab.UNK and vocab.to_gpt2(dense[:2]) == [3797, 464]
    assert vocab.to_gpt2([CompactVocab.UNK]) == [50256]
    with pytest.raises(ValueError, match="not in this vocabulary"):
        vocab.to_dense([999], strict=True)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        vocab.to_gpt2([4])
    with pytest.raises(ValueError, match="at least one"):
        CompactVocab([])
    with pytest.raises(ValueError, match="50257"):
        CompactVocab([50257])


def test_compact_tokenizer_round_trip():
    text = "One day, a little girl named Lily found a needle.<|endoftext|>"
    tok = CompactTokenizer.from_text(text)
    ids = tok.encode(text)
    assert max(ids) < tok.vocab_size and CompactVocab.UNK not in ids
    assert tok.decode(ids) == text


def test_unknown_tokens_decode_visibly_not_as_end_of_text():
    tok = CompactTokenizer.from_text("The cat sat.")
    ids = tok.encode("The dog sat.")  # " dog" is not in the vocabulary
    assert CompactVocab.UNK in ids
    assert tok.decode(ids) == "The<|unk|> sat."
    assert tok.decode([CompactVocab.UNK]) == "<|unk|>" and tok.decode([]) == ""
