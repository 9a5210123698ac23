"""MLflow logging that never stops a stage: the first failure warns once and turns tracking off.

Runs land in experiment "pftlab" (local `sqlite:///mlflow.db` unless MLFLOW_TRACKING_URI is set), one
run per stage, tagged with the stage, git commit, DVC experiment name and a `pipeline_run` id shared by
all stages of one `dvc repro` of one params file at one commit.
"""
import hashlib
import os
import subprocess
import warnings
from pathlib import Path

from pftlab.core.config import flatten

EXPERIMENT = "pftlab"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def pipeline_run_id(params_path="params.yaml") -> str:
    text = Path(params_path).read_bytes() if Path(params_path).exists() else b""
    return hashlib.sha256(_git_commit().encode() + text + os.environ.get("DVC_EXP_NAME", "").encode()).hexdigest()[:12]


class Tracker:
    """`with Tracker(stage, params) as t: t.log_metrics({...}, step)`; buffered, flushed in batches."""

    def __init__(self, stage: str, params: dict, enabled: bool = True):
        self.stage, self.params = stage, params
        self.enabled = enabled and os.environ.get("PFTLAB_MLFLOW", "1") != "0"
        self._buffer, self._run_id, self._client = [], None, None

    def _fail(self, err: Exception):
        if self.enabled:
            warnings.warn(f"MLflow tracking disabled for stage '{self.stage}': {type(err).__name__}: {err}", stacklevel=3)
        self.enabled = False

    def __enter__(self):
        if not self.enabled:
            return self
        try:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            import mlflow
            from mlflow.tracking import MlflowClient

            uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
            self._client = MlflowClient(tracking_uri=uri)
            exp = self._client.get_experiment_by_name(EXPERIMENT)
            exp_id = exp.experiment_id if exp else self._client.create_experiment(EXPERIMENT)
            tags = {
                "stage": self.stage,
                "git_commit": _git_commit(),
                "pipeline_run": pipeline_run_id(),
                "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
                "mlflow.runName": self.stage,
            }
            self._run_id = self._client.create_run(exp_id, tags=tags, run_name=self.stage).info.run_id
            params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flatten(self.params).items()]
            for i in range(0, len(params), 100):
                self._client.log_batch(self._run_id, params=params[i : i + 100])
        except Exception as err:  # tracking must never stop a stage
            self._fail(err)
        return self

    def log_metrics(self, metrics: dict, step: int = 0):
        if not self.enabled:
            return
        try:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._buffer += [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
            if len(self._buffer) >= 500:
                self.flush()
        except Exception as err:
            self._fail(err)

    def flush(self):
        if not self.enabled or not self._buffer:
            return
        try:
            for i in range(0, len(self._buffer), 1000):
                self._client.log_batch(self._run_id, metrics=self._buffer[i : i + 1000])
        except Exception as err:
            self._fail(err)
        self._buffer = []

    def log_artifact(self, path):
        if not self.enabled or not Path(path).exists():
            return
        try:
            if Path(path).is_dir():
                self._client.log_artifacts(self._run_id, str(path), artifact_path=Path(path).name)
            else:
                self._client.log_artifact(self._run_id, str(path))
        except Exception as err:
            self._fail(err)

    def __exit__(self, exc_type, exc, tb):
        self.flush()
        if self.enabled and self._run_id:
            try:
                self._client.set_terminated(self._run_id, status="FAILED" if exc_type else "FINISHED")
            except Exception as err:
                self._fail(err)
        return False
