"""pytest setup shared by unit tests and nbval.

Committed notebook outputs come from a CI-mode run, so the kernels nbval starts must run
in CI mode too: they inherit this process's environment.

With several xdist workers on a small machine, each worker (and each notebook kernel it
starts) uses one thread: two workers with two threads each on two cores run many times
slower than two single-threaded ones.
"""

import os

os.environ["COURSE_CI"] = "1"

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
