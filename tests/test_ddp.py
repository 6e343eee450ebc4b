"""Lecture 30: `torchrun --nproc_per_node=2 -m utils.capstone train` (DDP, gloo, 2 CPU processes) follows
the same loss trajectory as one process training on the same global batches.

Not bitwise: DistributedDataParallel averages two half-batch gradients, one process sums the whole
batch in one backward; float addition is not associative, so the gradients (and from them the
weights) differ in the last bits, about 1e-7 relative, and the losses drift by that much per step.
The expert loads are integer counts summed over the ranks, so the bias updates agree exactly.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from utils import capstone

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--config", "tiny", "--steps", "4", "--no-progress"]


@pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")
def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    # --standalone: a rendezvous on localhost at a free port; gloo, since the processes run on the CPU
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "utils.capstone", *ARGS, "--out", str(tmp_path / "ddp"), "--device", "cpu"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # meanwhile, one process on the same global batches
        assert capstone.main([*ARGS, "--out", str(tmp_path / "one"), "--device", "cpu"]) == 0
        out, _ = ddp.communicate(timeout=240)
    finally:
        if ddp.poll() is None:
            ddp.kill()
    assert ddp.returncode == 0, out[-3000:]
    assert "on 2 process(es)" in out and out.count("validation loss") == 2, out[-3000:]  # rank 0 alone logs

    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert one["step"] == two["step"] == 4
    h1, h2 = one["history"], two["history"]
    assert len(h2["train_losses"]) == 4  # the MTP weight drops at step 3
    torch.testing.assert_close(torch.tensor(h2["train_losses"]), torch.tensor(h1["train_losses"]),
                               rtol=1e-5, atol=1e-5)
    for name in ("lm", "mtp", "balance"):
        torch.testing.assert_close(torch.tensor(h2["metrics"][name]), torch.tensor(h1["metrics"][name]),
                                   rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(h2["val_points"]), torch.tensor(h1["val_points"]), rtol=1e-5, atol=1e-5)
    for key, value in one["model"].items():
        if key.endswith("e_score_correction_bias"):  # same summed loads -> the same bias, exactly
            assert torch.equal(two["model"][key], value), key
            assert value.abs().sum() > 0, "the bias update never ran"
        else:
            torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    d1, d2 = one["data"], two["data"]  # the same place in the same shuffle
    assert (d1["epoch"], d1["batch_in_epoch"], d1["batches_per_epoch"]) == \
        (d2["epoch"], d2["batch_in_epoch"], d2["batches_per_epoch"])
    assert all(torch.equal(a, b) for a, b in zip(d1["generators"], d2["generators"]))


def test_sharded_batches_cover_the_global_batch():
    """The ranks' slices of each global batch, put side by side, are the one-process batch."""
    whole = list(capstone.ShardedBatches(40, 8, seed=3))
    parts = [list(capstone.ShardedBatches(40, 8, rank=r, world_size=4, seed=3)) for r in range(4)]
    assert len(whole) == len(parts[0]) == 5
    for i, batch in enumerate(whole):
        assert sum((p[i] for p in parts), []) == batch
    with pytest.raises(ValueError, match="divisible"):
        capstone.ShardedBatches(40, 8, rank=0, world_size=3)
