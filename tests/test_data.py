import pytest
import torch

from utils import data
from utils.data import STORY_SEPARATOR, WindowDataset, encode_stories, load_corpus, make_loader, split_stories


def test_unknown_corpus_lists_available():
    with pytest.raises(ValueError, match="tinyshakespeare, tinystories"):
        load_corpus("wikipedia")


def test_corpora_load_with_known_sizes():
    assert len(load_corpus("tinyshakespeare")) == 1_115_394
    assert len(load_corpus("tinystories")) == 2_095_028
    assert load_corpus("tinystories").startswith("One day, a little girl named Lily found a needle")


def _with_file(monkeypatch, tmp_path, content: bytes | None):
    path = tmp_path / "story.txt"
    if content is not None:
        path.write_bytes(content)
    real = data.CORPORA["tinystories"]
    monkeypatch.setitem(data.CORPORA, "tinystories", data.Corpus(path, real.sha256, real.license))
    load_corpus.cache_clear()


def test_missing_corpus_names_file_and_fix(monkeypatch, tmp_path):
    _with_file(monkeypatch, tmp_path, None)
    try:
        with pytest.raises(FileNotFoundError, match="story.txt.*git checkout"):
            load_corpus("tinystories")
    finally:
        load_corpus.cache_clear()


def test_corrupted_corpus_names_file_and_fix(monkeypatch, tmp_path):
    _with_file(monkeypatch, tmp_path, b"Once upon a time")
    try:
        with pytest.raises(ValueError, match="corrupted.*git checkout"):
            load_corpus("tinystories")
    finally:
        load_corpus.cache_clear()


def test_split_by_story_is_deterministic_and_whole():
    text = load_corpus("tinystories")
    train, val = split_stories(text)
    assert len(train) + len(val) == 2316  # complete stories; the unfinished tail is dropped
    assert len(val) == 232 and (train, val) == split_stories(text)
    assert train[0].startswith("One day, a little girl named Lily")
    for story in train[:50] + val:
        assert "<|endoftext|>" not in story and story in text
    assert not (set(train) & set(val)) or len(set(train) & set(val)) < 3  # duplicates are rare


def test_split_rejects_bad_fraction_and_text():
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_stories("a" + STORY_SEPARATOR + "b" + STORY_SEPARATOR, 1.0)
    with pytest.raises(ValueError, match="two complete stories"):
        split_stories("no separators here")


def test_encode_stories_appends_end_id():
    assert encode_stories(["ab", "c"], lambda s: [ord(ch) for ch in s], 0) == [97, 98, 0, 99, 0]


def test_window_dataset_targets_are_shifted_inputs():
    ds = WindowDataset(list(range(10)), context_length=4, stride=1)
    assert len(ds) == 6
    x, y = ds[2]
    assert x.tolist() == [2, 3, 4, 5] and y.tolist() == [3, 4, 5, 6]
    assert len(WindowDataset(list(range(10)), 4)) == 2  # stride defaults to the context length
    with pytest.raises(IndexError):
        ds[6]


@pytest.mark.parametrize("kwargs, message", [
    (dict(ids=list(range(4)), context_length=4), "at least context_length"),
    (dict(ids=list(range(10)), context_length=0), "positive"),
    (dict(ids=list(range(10)), context_length=4, stride=0), "positive"),
])
def test_window_dataset_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowDataset(**kwargs)


def test_loader_shapes_and_repeatable_order():
    ids = torch.arange(200)
    first = [x for x, _ in make_loader(ids, context_length=8, batch_size=4, seed=1)]
    again = [x for x, _ in make_loader(ids, context_length=8, batch_size=4, seed=1)]
    assert first[0].shape == (4, 8) and all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ids, context_length=8, batch_size=0)
