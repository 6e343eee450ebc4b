"""Lecture 30's command line (utils.capstone) end to end on the tiny config: train, kill-and-resume with
identical losses, sample, export (read back by utils.hf_interop.import_hf), and bad input."""

import json
import shutil

import pytest
import torch

from utils import capstone
from utils.trainer import CheckpointError

TRAIN = ["train", "--config", "tiny", "--steps", "6", "--checkpoint-every", "3", "--no-progress"]


def _ckpt(run):
    return run / capstone.CHECKPOINT_NAME


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: 6 steps straight. Run B: killed after step 5 (last checkpoint: step 3), then resumed."""
    root = tmp_path_factory.mktemp("capstone")
    assert capstone.main([*TRAIN, "--out", str(root / "a")]) == 0
    assert capstone.main([*TRAIN, "--out", str(root / "b"), "--stop-at", "5"]) == 0
    killed = torch.load(_ckpt(root / "b"), weights_only=True)
    assert capstone.main([*TRAIN, "--out", str(root / "b"), "--resume"]) == 0
    return root, killed


def test_kill_and_resume_gives_identical_losses(runs):
    root, killed = runs
    assert killed["step"] == 3  # steps 4 and 5 were lost with the "kill"
    a = torch.load(_ckpt(root / "a"), weights_only=True)
    b = torch.load(_ckpt(root / "b"), weights_only=True)
    assert a["step"] == b["step"] == 6
    # bit for bit: model, optimizer, scheduler, bias, MTP weight, data order and RNG all resumed
    assert a["history"]["train_losses"] == b["history"]["train_losses"]
    assert a["history"]["metrics"] == b["history"]["metrics"]
    assert a["history"]["val_points"] == b["history"]["val_points"]
    assert a["history"]["lrs"] == b["history"]["lrs"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # the MTP weight switched from 0.3 to 0.1 at step round(0.7 * 6) = 4, after the resume point
    mtp = [h for h in a["hooks"].values() if "switch_step" in h][0]
    assert (mtp["switch_step"], mtp["current"]) == (4, 0.1)
    assert killed["hooks"]["1"]["current"] == 0.3
    assert any(v.abs().sum() > 0 for k, v in a["model"].items() if k.endswith("e_score_correction_bias"))


def test_sample_uses_the_saved_vocabulary(runs, capsys):
    root, _ = runs
    assert capstone.main(["sample", "--checkpoint", str(_ckpt(root / "a")), "--prompt", "Once upon a time",
                          "--max-new-tokens", "8", "--temperature", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Once upon a time") and len(text.strip()) > len("Once upon a time")
    model, tokenizer, record = capstone.load_model(_ckpt(root / "a"))
    assert tokenizer.vocab_size == model.cfg.vocab_size == len(record["vocab_gpt2_ids"])
    assert tokenizer.decode(tokenizer.encode("Once upon a time")) == "Once upon a time"


def test_export_reads_back_with_import_hf(runs, capsys):
    from utils.hf_interop import import_hf

    root, _ = runs
    out = root / "export"
    assert capstone.main(["export", "--checkpoint", str(_ckpt(root / "a")), "--to", str(out)]) == 0
    model, tokenizer, _ = capstone.load_model(_ckpt(root / "a"))
    again = import_hf(out).eval()
    idx = torch.tensor([tokenizer.encode("Once upon a time")])
    with torch.no_grad():
        torch.testing.assert_close(again(idx), model(idx))
    vocab = json.loads((out / capstone.VOCAB_FILE).read_text())
    assert [vocab["unk_gpt2_id"]] + vocab["gpt2_ids"] == tokenizer.vocab.gpt2_ids
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert capstone.main(["export", "--checkpoint", str(_ckpt(root / "a")), "--to", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten
    assert capstone.main(["export", "--checkpoint", str(_ckpt(root / "a")), "--to", str(out), "--overwrite"]) == 0


# ------------------------------------------------------------------------------------------- bad input
def test_unknown_config(capsys):
    assert capstone.main(["train", "--config", "huge"]) == 2
    assert "Unknown config 'huge'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="small, tiny"):
        capstone.get_config("huge")
    with pytest.raises(ValueError, match="steps"):
        capstone.get_config("tiny", steps=0)


def test_existing_checkpoint_is_not_overwritten(runs, tmp_path, capsys):
    root, _ = runs
    run = tmp_path / "run"
    shutil.copytree(root / "a", run)
    before = _ckpt(run).read_bytes()
    assert capstone.main([*TRAIN, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--resume" in err and "--overwrite" in err
    assert _ckpt(run).read_bytes() == before
    with pytest.raises(FileNotFoundError, match="Nothing to resume"):
        capstone.train_run("tiny", steps=6, out=tmp_path / "empty", resume=True, log=None)


def test_truncated_checkpoint(runs, tmp_path, capsys):
    root, _ = runs
    run = tmp_path / "run"
    run.mkdir()
    data = _ckpt(root / "a").read_bytes()
    _ckpt(run).write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        capstone.train_run("tiny", steps=6, checkpoint_every=3, out=run, resume=True, progress=False, log=None)
    assert capstone.main(["sample", "--checkpoint", str(_ckpt(run))]) == 2
    assert "truncated" in capsys.readouterr().err
    assert _ckpt(run).read_bytes() == data[:len(data) // 2]  # left as it was


def test_checkpoint_from_another_config_or_run(runs, tmp_path):
    root, _ = runs
    with pytest.raises(CheckpointError, match="config 'tiny', not 'small'"):
        capstone.train_run("small", out=root / "a", resume=True, progress=False, log=None)
    with pytest.raises(CheckpointError, match="TrainConfig.*steps"):  # another schedule: --steps differs
        capstone.train_run("tiny", steps=8, checkpoint_every=3, out=root / "a", resume=True, progress=False, log=None)
    other = tmp_path / "other.pt"  # a Lecture 22 checkpoint, not one of the capstone
    from utils.gpt import GPTConfig, GPTModel
    from utils.trainer import save_checkpoint
    save_checkpoint(other, GPTModel(GPTConfig(vocab_size=12, context_length=8, d_model=16, n_heads=2, n_layers=1)))
    with pytest.raises(CheckpointError, match="no run record"):
        capstone.load_model(other)


def test_resume_with_other_data_or_vocabulary(runs):
    root, _ = runs
    with pytest.raises(CheckpointError, match="other data or another vocabulary"):
        capstone.train_run("tiny", steps=6, checkpoint_every=3, val_fraction=0.2, out=root / "a", resume=True,
                           progress=False, log=None)
