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


def test_setup_cell_is_the_shared_one_and_collapsed(lecture):
    _, _, nb = lecture
    setup = nb.cells[course.setup_index(nb)]
    assert setup.source == course.setup_cell(), "run python tools/stamp.py"
    assert course.is_hidden(setup), "run python tools/stamp.py"


def _solution_cells(nb):
    """Code cells between the Solutions heading and the Summary heading that call a checker."""
    inside, cells = False, []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and re.search(r"^#+ .*Solutions", cell.source, re.M):
            inside = True
        elif cell.cell_type == "markdown" and re.search(r"^#+ .*Summary", cell.source, re.M):
            inside = False
        elif inside and cell.cell_type == "code" and "check(" in cell.source:
            cells.append(cell)
    return cells


def test_solutions_are_collapsed_and_worked(lecture):
    _, _, nb = lecture
    solutions = _solution_cells(nb)
    assert solutions, "no solution cell calls check(...)"
    for cell in solutions:
        assert course.is_hidden(cell), f"collapse the solution with tools.course.hide_source: {cell.source[:60]}"
    index = {id(c): i for i, c in enumerate(nb.cells)}
    for cell in solutions:  # a worked solution says why: prose right before its code
        before = nb.cells[index[id(cell)] - 1]
        assert before.cell_type == "markdown" and len(before.source.split()) >= 15, \
            f"explain the solution before its code: {cell.source[:60]}"


TEST_VOCABULARY = re.compile(r"(?i:nbval|CI[- ]mode|test suite|\bthe tests\b|pytest)|\bCI\b")


def test_learner_text_speaks_of_the_lesson_not_the_test_suite(lecture):
    _, _, nb = lecture
    for cell in nb.cells[1:]:  # the title cell is stamped
        text = cell.source if cell.cell_type == "markdown" else "\n".join(
            line for line in cell.source.split("\n") if line.lstrip().startswith("#"))
        if cell is nb.cells[course.setup_index(nb)]:
            continue
        found = TEST_VOCABULARY.search(text)
        assert not found, f"{found.group(0)!r} in: {text[:80]}"


def test_ignored_outputs_use_the_cell_tag(lecture):
    _, _, nb = lecture
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert "NBVAL" not in cell.source, "use the cell tag nbval-ignore-output, not a comment"


def test_outputs_are_one_clean_run(lecture):
    _, path, nb = lecture
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"execute {path.name} top to bottom (jupyter nbconvert --execute --inplace)"
    for cell in code:
        assert all(out.output_type != "error" for out in cell.outputs), cell.source[:80]
        assert "nbval-skip" not in cell.metadata.get("tags", [])


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


def test_colab_installs_a_subset_of_the_requirements():
    def names(path):
        return {re.split(r"[<>=!\[ ]", line.strip())[0].lower()
                for line in (ROOT / path).read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith(("#", "-r"))}
    colab, full = names("requirements-colab.txt"), names("requirements.txt")
    assert colab and colab <= full, colab - full
    assert {"torch", "numpy", "matplotlib", "jupyterlab", "nbval", "tiktoken"} <= full
    assert "requirements-colab.txt" in course.setup_cell()


def test_full_mode_is_recorded_for_every_notebook_within_budget():
    import json
    record = json.loads((ROOT / "docs" / "full_mode.json").read_text(encoding="utf-8"))
    for number, path in PRESENT.items():
        entry = record["notebooks"].get(f"{number:02d}")
        assert entry, f"record lecture {number:02d}: python tools/full_run.py {number:02d}"
        assert entry["notebook"] == path.name
        assert number == 30 or entry["wall_s"] <= 180, f"lecture {number:02d} takes {entry['wall_s']} s in full mode"
    assert (ROOT / "docs" / "full_mode.md").exists()
