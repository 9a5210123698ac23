import os

import pftlab  # noqa: F401  before torch: each test worker takes its share of the cores (core/threads.py)

os.environ.setdefault("PFTLAB_MLFLOW", "0")  # unit tests do not need tracking; the pipeline test turns it on
