"""pftlab: preference fine-tuning experiments of Tajwar et al. (2024) and Song et al. (2024)."""
import os

# Telemetry off unless the user opted in explicitly (MLflow wants exactly "true").
for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

# Threads and OpenMP's wait policy before anything loads torch (core/threads.py): stages import pftlab first.
from pftlab.core.threads import cooperate  # noqa: E402

cooperate()

# In a DVC stage's process, its MLflow writer starts now, so that its start-up overlaps the stage's imports
# (not in the writer itself, nor in any other child of a stage that started one: they inherit the marker).
if os.environ.get("DVC_STAGE") and not os.environ.get("PFTLAB_TRACKING_WRITER"):
    from pftlab.core.tracking import prestart_writer

    prestart_writer()

__version__ = "0.1.0"
