import os

os.environ.setdefault("PFTLAB_MLFLOW", "0")  # unit tests do not need tracking; the pipeline test turns it on
