"""MLflow logging that never stops a stage: the first failure warns once and turns tracking off.

Runs land in experiment "pftlab" of the repository's own `mlflow.db` (unless MLFLOW_TRACKING_URI is set),
also when DVC runs a stage in a temporary copy of the repository (`dvc exp run --temp`, `--queue`): one run
per stage, tagged with the stage, git commit, DVC experiment name and a `pipeline_run` id shared by all
stages of one `dvc repro` of one params file at one commit. Two pipelines writing at once (`dvc queue start
-j 2`) wait for sqlite's lock, up to PFTLAB_MLFLOW_WAIT seconds (default 300), rather than drop a run.
"""
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

from pftlab.core.config import flatten

EXPERIMENT = "pftlab"
# MLflow 3 opens an experiment without this tag on its GenAI overview (traces); ours holds training runs
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
WAIT_SECONDS = 300  # PFTLAB_MLFLOW_WAIT: how long a writer waits for a store another writer holds


def repository_root(cwd=None) -> Path:
    """The repository a stage belongs to: DVC runs queued and `--temp` experiments in a copy under
    `<repo>/.dvc/tmp/exps/`, whose own mlflow.db would be deleted with it."""
    parts = Path(cwd or os.getcwd()).resolve().parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return Path(*parts)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root() / 'mlflow.db'}"


def _patiently(call, *args, **kwargs):
    """A store call, retried while another writer holds sqlite's lock (MLflow raises it as a generic error)."""
    deadline = time.time() + float(os.environ.get("PFTLAB_MLFLOW_WAIT", WAIT_SECONDS))
    pause = 0.2
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the lock surfaces as MlflowException / OperationalError
            if "locked" not in str(err).lower() or time.time() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


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
    """`with Tracker(stage, params) as t: t.log_metrics({...}, step)`; buffered, flushed in batches.

    A writer process (`python -m pftlab.core.tracking`) imports MLflow and logs what the stage sends it over a
    pipe: the ~3 s of importing MLflow and opening its store overlap the stage's own work instead of adding to
    it (a thread would not: both halves are Python and would take turns on the GIL). Metrics stream as they
    come, so a long run can be watched live. The writer reports its first failure when the stage ends, as one
    warning; the stage never waits on a failed store nor stops for one.
    """

    def __init__(self, stage: str, params: dict, enabled: bool = True):
        self.stage, self.params = stage, params
        self.enabled = enabled and os.environ.get("PFTLAB_MLFLOW", "1") != "0"
        self._buffer, self._writer = [], None

    def _fail(self, err: str):
        if self.enabled:
            warnings.warn(f"MLflow tracking disabled for stage '{self.stage}': {err}", stacklevel=3)
        self.enabled = False

    def _send(self, message: dict):
        try:
            self._writer.stdin.write(json.dumps(message) + "\n")
            self._writer.stdin.flush()
        except (OSError, ValueError) as err:  # the writer is gone: its own report says why, if it had time
            self._finish(f"{type(err).__name__}: {err}")

    def __enter__(self):
        if not self.enabled:
            return self
        try:
            self._writer = subprocess.Popen([sys.executable, "-m", "pftlab.core.tracking"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True)
        except OSError as err:
            self._fail(f"{type(err).__name__}: {err}")
            return self
        self._send({"open": {"stage": self.stage, "params": {k: str(v)[:6000] for k, v in flatten(self.params).items()}}})
        return self

    def log_metrics(self, metrics: dict, step: int = 0):
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        self._buffer += [(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if len(self._buffer) >= 500:
            self.flush()

    def flush(self):
        if self.enabled and self._buffer:
            self._send({"metrics": self._buffer})
        self._buffer = []

    def log_artifact(self, path):
        if self.enabled and Path(path).exists():
            self._send({"artifact": str(Path(path).resolve())})

    def _finish(self, err: str = ""):
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            report = writer.communicate(timeout=600)[0].strip()  # closes its stdin: the writer ends
        except subprocess.TimeoutExpired:
            writer.kill()
            report = "ERROR TimeoutExpired: the MLflow writer did not finish within 600 s"
        if report.startswith("ERROR ") or err:
            self._fail(report[len("ERROR "):] if report.startswith("ERROR ") else err)

    def __exit__(self, exc_type, exc, tb):
        if self.enabled:
            self.flush()
            self._send({"end": "FAILED" if exc_type else "FINISHED"})
            self._finish()
        return False


def _write_from_pipe(lines):
    """The writer process: log each message of one stage's run; on the first failure stop logging (keep reading,
    so the stage is never blocked on a full pipe) and print `ERROR <why>` for the stage to warn with."""
    client = run_id = error = None
    ended = False
    for line in lines:
        if error:
            continue
        try:
            message = json.loads(line)
            if "open" in message:
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
                from mlflow.entities import Param
                from mlflow.tracking import MlflowClient

                stage = message["open"]["stage"]
                client = _patiently(MlflowClient, tracking_uri=tracking_uri())
                exp = _patiently(client.get_experiment_by_name, EXPERIMENT)
                if exp is None:  # artifacts beside the repository's mlflow.db, not in a temporary workspace
                    artifacts = None if os.environ.get("MLFLOW_TRACKING_URI") else (repository_root() / "mlruns").as_uri()
                    exp_id = _patiently(client.create_experiment, EXPERIMENT, artifact_location=artifacts)
                else:
                    exp_id = exp.experiment_id
                if (exp.tags if exp else {}).get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # open on the runs table
                    _patiently(client.set_experiment_tag, exp_id, *EXPERIMENT_KIND)
                tags = {"stage": stage, "git_commit": _git_commit(), "pipeline_run": pipeline_run_id(),
                        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""), "mlflow.runName": stage}
                run_id = _patiently(client.create_run, exp_id, tags=tags, run_name=stage).info.run_id
                params = [Param(k, v) for k, v in message["open"]["params"].items()]
                for i in range(0, len(params), 100):
                    _patiently(client.log_batch, run_id, params=params[i : i + 100])
            elif "metrics" in message:
                from mlflow.entities import Metric

                metrics = [Metric(*m) for m in message["metrics"]]
                for i in range(0, len(metrics), 1000):
                    _patiently(client.log_batch, run_id, metrics=metrics[i : i + 1000])
            elif "artifact" in message:
                path = Path(message["artifact"])
                if path.is_dir():
                    _patiently(client.log_artifacts, run_id, str(path), artifact_path=path.name)
                else:
                    _patiently(client.log_artifact, run_id, str(path))
            elif "end" in message:
                _patiently(client.set_terminated, run_id, status=message["end"])
                ended = True
        except Exception as err:  # noqa: BLE001 - any failure of the store ends tracking for this stage
            error = f"{type(err).__name__}: {err}"
    if run_id and not ended and not error:  # the stage died without saying so
        try:
            client.set_terminated(run_id, status="KILLED")
        except Exception as err:  # noqa: BLE001
            error = f"{type(err).__name__}: {err}"
    print(f"ERROR {error}" if error else "OK", flush=True)


if __name__ == "__main__":
    _write_from_pipe(sys.stdin)
