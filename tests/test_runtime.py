import pytest
import torch

from utils import runtime


def test_set_seed_repeats_draws():
    runtime.set_seed(7)
    a = torch.randn(5)
    runtime.set_seed(7)
    assert torch.equal(a, torch.randn(5))


def test_set_seed_rejects_bad_seed():
    with pytest.raises(ValueError, match="non-negative integer"):
        runtime.set_seed(-1)


def test_get_device_is_cpu_without_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(runtime.MPS_ENV_VAR, raising=False)
    assert runtime.get_device() == torch.device("cpu")


def test_get_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_device().type == "cuda"


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_ci_mode_flag(monkeypatch, value, expected):
    monkeypatch.setenv(runtime.CI_ENV_VAR, value)
    assert runtime.is_ci_mode() is expected
    assert runtime.ci_or_full(ci=1, full=2) == (1 if expected else 2)


def test_ci_mode_flag_rejects_garbage(monkeypatch):
    monkeypatch.setenv(runtime.CI_ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="COURSE_CI"):
        runtime.is_ci_mode()


def test_environment_report_has_versions():
    report = runtime.environment_report()
    assert report["torch"] == torch.__version__ and report["device"]


def test_show_full_run_quotes_the_record(tmp_path, monkeypatch, capsys):
    import json

    import utils
    from utils.runtime import show_full_run

    monkeypatch.setattr(utils, "ROOT", tmp_path)
    show_full_run(3)
    assert "No full run of lecture 03 is recorded yet" in capsys.readouterr().out
    (tmp_path / "docs").mkdir()
    record = {"machine": "2 CPU cores", "date": "2026-11-29",
              "notebooks": {"03": {"notebook": "03_x.ipynb", "wall_s": 140, "results": ["val loss 2.5"]}}}
    (tmp_path / "docs" / "full_mode.json").write_text(json.dumps(record))
    show_full_run(3)
    out = capsys.readouterr().out
    assert "on 2 CPU cores, 2026-11-29: 140 s in all" in out and "val loss 2.5" in out
