"""Lecture 30: the training run keeps the weights of its best validation, and ``ship`` writes them.

A 20-step run of the tiny capstone config (validations at steps 10 and 20): ``best.pt`` holds the weights
of the lowest validation loss, ``ship`` writes exactly those with a truthful ``run.json`` and never
replaces a shipped folder unless asked.
"""

import pytest
import torch

from utils import capstone

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """20 steps of the tiny config: validations at steps 10 and 20, checkpoint and best.pt in the run folder."""
    out = tmp_path_factory.mktemp("tiny")
    history = capstone.train_run("tiny", steps=20, out=out, progress=False, log=None)
    return out, history


def test_best_weights_are_those_of_the_best_validation(tiny_run):
    out, history = tiny_run
    best = capstone.read_best(out / capstone.CHECKPOINT_NAME)
    step, loss = min(history.val_points, key=lambda p: p[1])
    assert (best["step"], best["val_loss"]) == (step, loss)
    model, _, _ = capstone.load_model(out / capstone.CHECKPOINT_NAME)
    model.load_state_dict(best["model"])
    assert abs(capstone.validation_loss(model, "tiny") - loss) < 1e-6  # the same batches as the run's


def test_ship_writes_the_best_weights_and_refuses_to_overwrite(tiny_run, tmp_path, capsys):
    out, history = tiny_run
    ckpt = out / capstone.CHECKPOINT_NAME
    target = tmp_path / "shipped"
    capstone.ship(ckpt, target, note="a check")
    model, tokenizer, run = capstone.load_shipped(target)
    best = capstone.read_best(ckpt)
    for key, value in model.state_dict().items():
        assert torch.equal(value, best["model"][key]), key
    assert run["note"] == "a check" and run["best_step"] == best["step"]
    assert [tuple(p) for p in run["val_points"]] == [tuple(p) for p in history.val_points]
    assert abs(run["shipped_val_loss"] - run["best_val_loss"]) < 1e-6
    assert run["commands"][0].startswith("utils.capstone.train_run('tiny'") and run["wall_seconds"] > 0
    assert tokenizer.vocab.gpt2_ids == [run["vocabulary"]["unk_gpt2_id"]] + run["vocabulary"]["gpt2_ids"]
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    assert capstone.main(["ship", "--checkpoint", str(ckpt), "--to", str(target)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # nothing replaced
    assert capstone.main(["ship", "--checkpoint", str(ckpt), "--to", str(target), "--overwrite"]) == 0
    with pytest.raises(FileNotFoundError, match="ship a run first"):
        capstone.load_shipped(tmp_path / "nothing")
