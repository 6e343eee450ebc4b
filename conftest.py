"""pytest setup shared by unit tests and nbval.

Committed notebook outputs come from a CI-mode run, so the kernels nbval starts must run
in CI mode too: they inherit this process's environment.
"""

import os

os.environ["COURSE_CI"] = "1"
