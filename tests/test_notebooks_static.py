"""Static checks of the committed notebooks and README (nbval executes them separately)."""

import re
import sys

import nbformat
import pytest

from utils import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import course  # noqa: E402

NOTEBOOKS = sorted(course.NOTEBOOKS.glob("*.ipynb"))
PRESENT = course.existing()
MACHINE_PATH = str(ROOT.parent)


def test_every_notebook_is_in_the_lecture_map():
    planned = {lec["notebook"] for lec in course.LECTURES.values()}
    assert [p.name for p in NOTEBOOKS if p.name not in planned] == []
    assert len(PRESENT) >= 1


@pytest.fixture(params=sorted(PRESENT), ids=lambda n: f"{n:02d}")
def lecture(request):
    number = request.param
    path = PRESENT[number]
    return number, path, nbformat.read(path, as_version=4)


def test_title_cell_has_title_video_and_badge(lecture):
    number, _, nb = lecture
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert first.source == course.title_cell(number), "run python tools/stamp.py"
    assert course.LECTURES[number]["video"] in first.source and "colab-badge.svg" in first.source


def test_setup_cell_is_the_shared_one(lecture):
    _, _, nb = lecture
    assert nb.cells[course.setup_index(nb)].source == course.setup_cell(), "run python tools/stamp.py"


def test_outputs_are_one_clean_run(lecture):
    _, path, nb = lecture
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"execute {path.name} top to bottom (jupyter nbconvert --execute --inplace)"
    for cell in code:
        assert all(out.output_type != "error" for out in cell.outputs), cell.source[:80]
        assert "NBVAL_SKIP" not in cell.source


def test_size_paths_and_kernel(lecture):
    _, path, nb = lecture
    assert path.stat().st_size < 2_000_000
    assert MACHINE_PATH not in path.read_text(encoding="utf-8")
    assert nb.metadata.kernelspec.name == "python3"


def test_template_sections_and_exercise_keys(lecture):
    number, _, nb = lecture
    headings = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for section in ("Exercises", "Solutions", "Summary"):
        assert re.search(rf"^#+ .*{section}", headings, re.M | re.I), f"missing a '{section}' heading"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    keys = set(re.findall(r'check\(\s*"(\d\d\.\d+)"', code))
    assert keys, "exercises need checkers: check(\"NN.k\", fn)"
    assert all(k.startswith(f"{number:02d}.") for k in keys), keys
    from utils.exercises import get_exercise
    for key in keys:
        get_exercise(key)


def test_readme_table_matches_notebooks():
    assert (ROOT / "README.md").read_text(encoding="utf-8") == course.stamped_readme(), "run python tools/stamp.py"


def test_stamp_script_reports_nothing_to_do():
    import subprocess
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "stamp.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
