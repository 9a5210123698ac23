"""MLflow logging that never stops a stage: the first failure warns once and turns tracking off.

Where: experiment "pftlab" of the repository's own `mlflow.db` (unless MLFLOW_TRACKING_URI is set), also when
DVC runs the pipeline in a temporary copy of the repository (`dvc exp run --temp`, `--queue`). Two pipelines
writing at once (`dvc queue start -j 2`) wait for sqlite's lock, up to PFTLAB_MLFLOW_WAIT seconds (default
300), rather than drop a run.

Shape: runs are nested the way the work is.

    <pipeline run>            one per params file (and DVC experiment), however many `dvc repro` calls and
    |                         commits built it: named by the DVC experiment, or `params <hash>` in the
    |                         workspace; holds every param of params.yaml (each stage run tags its commit)
    |-- prepare, sft, ...     one run per stage: its declared params, curves, final/* metrics, its inputs
    |-- dpo (<pipeline run>)  one run per trained policy (also sft, dpo seed 1, dpo on mode_length):
    |   |-- policy@dpo        its training params (policy.*, algos.dpo.*, ...), its curves and its held-out
    |   `-- evaluate@dpo      metrics (gold/proxy reward, KL, win rate, length), so two experiments compare here

Every stage run carries MLflow's source tags (git commit, entry point), logs its data dependencies as inputs
whose digests are their DVC hashes (read from dvc.lock, where DVC wrote them when the producing stage ended),
and a stage that trains a model logs it as an MLflow model (its DVC hash is tagged when a later stage of the
same pipeline run reads it). PFTLAB_MLFLOW_SYSTEM_METRICS=true adds CPU/GPU/memory metrics; PFTLAB_MLFLOW=0
turns tracking off.
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
from pftlab.core.errors import PftlabError
from pftlab.core.params import locked_stages
from pftlab.core.pipeline import algorithm_run_name  # the policy run a stage belongs to

EXPERIMENT = "pftlab"
# MLflow 3 opens an experiment without this tag on its GenAI overview (traces); ours holds training runs. (3.17's
# UI reads the browser's workflow choice instead: RUNS_TABLE's `workflowType` opens the runs table there.)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# A saved view of the runs table, stored in this experiment tag: the held-out results of every policy run as
# columns, wide enough to read their names, so a comparison needs no column picking. MLflow 3.17 lists it under
# "Views" by its name, and opens it for `viewStateShareKey=pftlab`. (MLflow reads the tag as an envelope with a name
# and a creation time; a constant time keeps the tag unchanged from run to run.)
VIEW_KEY = "pftlab"
VIEW_NAME = "pftlab: held-out results"
VIEW_COLUMNS = ("eval/gold_reward", "eval/gold_reward_ci95", "eval/kl_k1", "eval/win_rate_vs_sft", "eval/response_length")
# MLflow prints a metric unrounded (0.04245717...): a result with an interval (`<key>_ci95`) is also a tag of its
# run, "0.0425 ± 0.013" (its 95% interval), the view's first column (MLflow's keys allow no "±" or "%")
INTERVAL = ": rounded with CI"
VIEW_TAGS = ("eval/gold_reward" + INTERVAL,)
_VIEW_KEYS = [f"tags.`{t}`" for t in VIEW_TAGS] + [f"metrics.`{m}`" for m in VIEW_COLUMNS]
_VIEW_STATE = {
    "selectedColumns": _VIEW_KEYS,
    # MLflow applies widths only to the columns its order names; a header takes about 7 px a character
    "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration"] + _VIEW_KEYS,
    "columnWidths": {"attributes.`Run Name`": 260} | {key: 7 * len(key.split("`")[1]) + 24 for key in _VIEW_KEYS},
}
VIEW = ("mlflow.sharedViewState." + VIEW_KEY, json.dumps({"name": VIEW_NAME, "createdAt": 0, "state": json.dumps(_VIEW_STATE)}))
RUNS_TABLE = "#/experiments/{id}/runs?workflowType=machine_learning&viewStateShareKey=" + VIEW_KEY
WAIT_SECONDS = 300  # PFTLAB_MLFLOW_WAIT: how long a writer waits for a store another writer holds
CODE_SUFFIXES = (".py", ".cfg", ".toml", ".html", ".yaml", ".md")  # deps that are code or config, not data


def repository_root(cwd=None) -> Path:
    """The repository a stage belongs to. DVC runs queued and `--temp` experiments in a copy under
    `<repo>/.dvc/tmp/exps/`, whose own mlflow.db would be deleted with it (DVC_ROOT names the repository then)."""
    start = os.environ.get("DVC_ROOT") if cwd is None else None
    parts = Path(start or cwd or os.getcwd()).resolve().parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return Path(*parts)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root() / 'mlflow.db'}"


def _patiently(call, *args, **kwargs):
    """A store call, retried while another writer holds sqlite's lock (MLflow raises it as a generic error), and
    retried twice after a row another writer inserted at the same moment: MLflow's get-or-create of a dataset is
    not atomic (two experiments of `dvc queue start -j 2` logging the same input), and the next try finds it."""
    deadline = time.time() + float(os.environ.get("PFTLAB_MLFLOW_WAIT", WAIT_SECONDS))
    pause, collisions = 0.2, 0
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the lock surfaces as MlflowException / OperationalError
            message = str(err).lower()
            collisions += "unique constraint failed" in message
            if not ("locked" in message or 0 < collisions <= 2) or time.time() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def _params_digest(params_path="params.yaml") -> str:
    text = Path(params_path).read_bytes() if Path(params_path).exists() else b""
    return hashlib.sha256(text).hexdigest()


def pipeline_run_id(params_path="params.yaml") -> str:
    """Shared by every stage run under one params file (and one DVC experiment), whichever `dvc repro` call or
    commit ran it: a pipeline built by several calls, or across a commit, is one parent run, not several."""
    key = _params_digest(params_path) + os.environ.get("DVC_EXP_NAME", "")
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def pipeline_run_name(params_path="params.yaml") -> str:
    """The DVC experiment's name, or `params <params hash>` for a run in the workspace."""
    return os.environ.get("DVC_EXP_NAME") or f"params {_params_digest(params_path)[:6]}"


def dvc_inputs(stage: str, lock_path="dvc.lock") -> list:
    """[(path, DVC hash, is_model)] of the stage's data dependencies. A dependency produced by another stage has
    that stage's output hash in dvc.lock (written when it ended, so current); a source (data/raw) has the hash of
    this stage's last run. Code and config deps are left out: the git commit names them."""
    stages = locked_stages(lock_path)
    produced = {o["path"]: o.get("md5", "") for s in stages.values() for o in s.get("outs", [])}
    out = []
    for dep in (stages.get(stage) or {}).get("deps", []):
        path = dep["path"]
        if path.endswith(CODE_SUFFIXES) or path.startswith(("src/", "stages/", "configs/")):
            continue
        out.append((path, produced.get(path, dep.get("md5", "")), path in produced and path.startswith("models/")))
    return out


PRESTARTED = "PFTLAB_TRACKING_WRITER"  # set once a stage process started its writer: its children start none
_prestarted = None  # that writer, until the stage's Tracker takes it


def _spawn_writer():
    return subprocess.Popen([sys.executable, "-m", "pftlab.core.tracking"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def prestart_writer(env=os.environ):
    """In a DVC stage's process, start its writer now (`import pftlab` calls this before torch loads): MLflow's
    import and store opening (~3-7 s) then overlap the stage's own imports instead of following them.

    Only where a Tracker will log: a DVC stage (`DVC_STAGE`), tracking on, rank 0 of a launch. The marker it sets
    is inherited, so the stage's own children (spawned workers) start none."""
    global _prestarted
    if (not env.get("DVC_STAGE") or env.get(PRESTARTED) or env.get("PFTLAB_MLFLOW", "1") == "0"
            or env.get("RANK", "0") != "0"):
        return
    env[PRESTARTED] = str(os.getpid())
    try:
        _prestarted = _spawn_writer()
    except OSError:  # the Tracker tries again and warns
        _prestarted = None


def _take_prestarted():
    global _prestarted
    writer, _prestarted = _prestarted, None
    return writer if writer is not None and writer.poll() is None else None


def with_intervals(numbers: dict) -> dict:
    """`<key>: rounded with CI` -> "mean ± 95% half-width" for each result with a finite `<key>_ci95`: the mean to 3 significant
    digits, the half-width to 2, so the runs table reads at a glance."""
    return {k + INTERVAL: f"{v:.3g} ± {numbers[k + '_ci95']:.2g}" for k, v in numbers.items()
            if isinstance(numbers.get(k + "_ci95"), (int, float)) and abs(numbers[k + "_ci95"]) < float("inf")
            and v == v}


class Tracker:
    """`with Tracker(stage, params) as t: t.log_metrics({...}, step)`; buffered, flushed in batches.

    A writer process (`python -m pftlab.core.tracking`) imports MLflow and logs what the stage sends it over a
    pipe: the ~3 s of importing MLflow and opening its store overlap the stage's own imports and work instead of
    adding to them (a thread would not: both halves are Python and would take turns on the GIL). Under DVC the
    writer starts with the stage's process (`prestart_writer`), else here. Metrics stream as they
    come, so a long run can be watched live. The writer reports its first failure when the stage ends, as one
    warning; the stage never waits on a failed store nor stops for one.

    Step-wise metrics (curves) go to the stage's run and to its policy's run; `log_results` puts a stage's
    results on its policy's run (held-out metrics), `log_model` logs a trained model the stage wrote.
    """

    def __init__(self, stage: str, params: dict, enabled: bool = True, all_params: dict = None, dvc_stage: str = None):
        self.stage, self.params, self.all_params = stage, params, all_params or {}
        self.dvc_stage = dvc_stage or os.environ.get("DVC_STAGE") or stage  # evaluate@sft is DVC's evaluate_sft
        self.enabled = enabled and os.environ.get("PFTLAB_MLFLOW", "1") != "0"
        self._buffer, self._writer = [], None
        self._logged = False  # whether the stage reported anything: a PftlabError before that is a refusal

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
        prestarted = _take_prestarted()
        if not self.enabled:
            if prestarted is not None:
                prestarted.stdin.close()  # no message: it ends without touching the store's runs
            return self
        try:
            self._writer = prestarted or _spawn_writer()
        except OSError as err:
            self._fail(f"{type(err).__name__}: {err}")
            return self
        as_text = lambda d: {k: str(v)[:6000] for k, v in flatten(d).items()}
        self._send({"open": {"stage": self.stage, "dvc_stage": self.dvc_stage, "params": as_text(self.params),
                             "all_params": as_text(self.all_params), "entry_point": sys.argv[0]}})
        return self

    def log_metrics(self, metrics: dict, step: int = 0, to_policy_run: bool = True):
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        self._logged = True
        self._buffer += [(k, float(v), now, step, to_policy_run) for k, v in metrics.items() if v is not None]
        if len(self._buffer) >= 500:
            self.flush()

    def log_results(self, metrics: dict):
        """Final numbers of the stage on its policy's run (the stage's own run has them as final/*)."""
        self.flush()
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._logged = self._logged or bool(numbers)
        if self.enabled and numbers:
            self._send({"results": numbers, "rounded": with_intervals(numbers)})

    def flush(self):
        if self.enabled and self._buffer:
            self._send({"metrics": self._buffer})
        self._buffer = []

    def log_artifact(self, path):
        self._logged = True
        if self.enabled and Path(path).exists():
            self._send({"artifact": str(Path(path).resolve())})

    def log_model(self, path):
        """A model directory this stage wrote (a DVC output): an MLflow model named by its path, pointing at it."""
        if self.enabled:
            self._send({"model": str(path)})

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
            # A bad param or data file refused before the stage reported anything leaves no run behind (a store
            # full of FAILED runs from trying data files hides the real ones); a failure after that is kept.
            refused = exc_type is not None and issubclass(exc_type, PftlabError) and not self._logged
            self._send({"end": "REFUSED" if refused else "FAILED" if exc_type else "FINISHED"})
            self._finish()
        return False


class _Writer:
    """The writer process's side: the nested runs of one stage (see the module docstring)."""

    def __init__(self, message: dict, store: tuple):
        self.stage, self.dvc_stage = message["stage"], message["dvc_stage"]
        self.client, self.exp_id = store
        self.pipeline_run = pipeline_run_id()
        self.created, self.reopened = [], {}  # runs this stage created; runs it found, with the status to restore
        commit = _git_commit()
        source = {"mlflow.source.type": "LOCAL", "mlflow.source.name": message.get("entry_point") or self.stage,
                  "mlflow.source.git.commit": commit, "git_commit": commit, "pipeline_run": self.pipeline_run,
                  "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
        pipeline_name = pipeline_run_name()
        self.parent = self._run({"run_kind": "pipeline"}, pipeline_name, None, source, message["all_params"])
        self.policy_name = algorithm_run_name(self.stage)
        self.policy = None
        if self.policy_name:  # named with its pipeline run too: the compare view lists runs by name
            training = message["params"] if self.stage.startswith(("policy", "sft")) else {}
            self.policy = self._run({"run_kind": "policy", "policy_run": self.policy_name},
                                    f"{self.policy_name} ({pipeline_name})", self.parent, source, training)
        self.run = self._run({"run_kind": "stage", "stage": self.stage}, self.stage, self.policy or self.parent, source,
                             message["params"], always_new=True)
        self._log_inputs()
        if os.environ.get("PFTLAB_MLFLOW_SYSTEM_METRICS") == "true":
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(self.run, sampling_interval=5, tracking_uri=tracking_uri())
            self.monitor.start()
        else:
            self.monitor = None

    def _run(self, identity: dict, name: str, parent, tags: dict, params: dict, always_new=False) -> str:
        """Find (by its identity tags within this pipeline run) or create a run, mark it running, log params."""
        from mlflow.entities import Param

        identity = {**identity, "pipeline_run": self.pipeline_run}
        run_id = None
        if not always_new:
            query = " and ".join(f"tags.{k} = '{v}'" for k, v in identity.items())
            found = _patiently(self.client.search_runs, [self.exp_id], query, max_results=1)
            run_id = found[0].info.run_id if found else None
        if run_id is None:
            tags = {**tags, **identity, "mlflow.runName": name} | ({"mlflow.parentRunId": parent} if parent else {})
            run_id = _patiently(self.client.create_run, self.exp_id, tags=tags, run_name=name).info.run_id
            self.created.append(run_id)
        else:
            self.reopened[run_id] = found[0].info.status
            _patiently(self.client.update_run, run_id, status="RUNNING")
        logged = _patiently(self.client.get_run, run_id).data.params if not always_new else {}
        fresh = [Param(k, v) for k, v in params.items() if k not in logged]  # MLflow refuses to change a param
        for i in range(0, len(fresh), 100):
            _patiently(self.client.log_batch, run_id, params=fresh[i : i + 100])
        return run_id

    def _log_inputs(self):
        from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput

        datasets, models = [], []
        for path, digest, is_model in dvc_inputs(self.dvc_stage):
            context = "model" if is_model else ("evaluation" if self.stage.startswith("evaluate") else "training")
            source = json.dumps({"uri": path, "dvc_md5": digest})
            datasets.append(DatasetInput(Dataset(name=path, digest=digest[:36], source_type="local", source=source),
                                         tags=[InputTag("mlflow.data.context", context)]))
            if is_model:  # the model a stage of this pipeline run logged: it now gets its DVC hash
                query = f"tags.`pftlab.path` = '{path}' AND tags.`pftlab.pipeline_run` = '{self.pipeline_run}'"
                for model in _patiently(self.client.search_logged_models, [self.exp_id], query, max_results=1):
                    _patiently(self.client.set_logged_model_tags, model.model_id, {"dvc_md5": digest})
                    models.append(LoggedModelInput(model.model_id))
        if datasets or models:
            _patiently(self.client.log_inputs, self.run, datasets=datasets, models=models)

    def metrics(self, rows):
        from mlflow.entities import Metric

        for run_id, keep in ((self.run, lambda r: True), (self.policy, lambda r: r[4])):
            metrics = [Metric(*r[:4]) for r in rows if keep(r)]
            for i in range(0 if run_id else len(metrics), len(metrics), 1000):
                _patiently(self.client.log_batch, run_id, metrics=metrics[i : i + 1000])

    def results(self, numbers: dict, rounded: dict):
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        _patiently(self.client.log_batch, self.policy or self.run, metrics=[Metric(k, float(v), now, 0) for k, v in numbers.items()],
                   tags=[RunTag(k, v) for k, v in rounded.items()])

    def artifact(self, path: Path):
        if path.is_dir():
            _patiently(self.client.log_artifacts, self.run, str(path), artifact_path=path.name)
        else:
            _patiently(self.client.log_artifact, self.run, str(path))

    def model(self, path: str):
        from mlflow.entities import LoggedModelOutput

        name = path.replace("/", "-")
        tags = {"pftlab.path": path, "pftlab.pipeline_run": self.pipeline_run, "pftlab.stage": self.stage}
        model = _patiently(self.client.create_logged_model, self.exp_id, name=name, source_run_id=self.run, tags=tags,
                           model_type="pftlab-dvc-output")
        _patiently(self.client.finalize_logged_model, model.model_id, "READY")
        for run_id in filter(None, (self.run, self.policy)):
            _patiently(self.client.log_outputs, run_id, [LoggedModelOutput(model.model_id, 0)])

    def end(self, status: str):
        if self.monitor:
            self.monitor.finish()
        if status == "REFUSED":  # nothing ran: remove this stage's run, and the policy and pipeline runs it opened
            for run_id in filter(None, (self.run, self.policy, self.parent)):  # ...unless other runs hang below them
                below = _patiently(self.client.search_runs, [self.exp_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                   max_results=1)
                if run_id in self.created and not below:
                    _patiently(self.client.delete_run, run_id)
                elif run_id in self.reopened:  # an earlier stage's run: as it was
                    _patiently(self.client.update_run, run_id, status=self.reopened[run_id])
            return
        _patiently(self.client.set_terminated, self.run, status=status)
        for run_id in filter(None, (self.policy, self.parent)):  # the last stage to end leaves them ended
            _patiently(self.client.set_terminated, run_id, status=status)


def _open_store() -> tuple:
    """(client, experiment id): MLflow's import and the store's opening, the slow part of a writer's start, done
    before the stage's first message arrives."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    client = _patiently(MlflowClient, tracking_uri=tracking_uri())
    exp = _patiently(client.get_experiment_by_name, EXPERIMENT)
    if exp is None:  # artifacts beside the repository's mlflow.db, not in a temporary workspace
        artifacts = None if os.environ.get("MLFLOW_TRACKING_URI") else (repository_root() / "mlruns").as_uri()
        exp_id = _patiently(client.create_experiment, EXPERIMENT, artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
    for key, value in (EXPERIMENT_KIND, VIEW):  # open on the runs table, with the results as columns
        if (exp.tags if exp else {}).get(key) != value:
            _patiently(client.set_experiment_tag, exp_id, key, value)
    return client, exp_id


def _write_from_pipe(lines):
    """The writer process: log each message of one stage's run; on the first failure stop logging (keep reading,
    so the stage is never blocked on a full pipe) and print `ERROR <why>` for the stage to warn with."""
    writer = error = store = None
    ended = False
    try:
        store = _open_store()
    except Exception as err:  # noqa: BLE001 - reported like any later failure
        error = f"{type(err).__name__}: {err}"
    for line in lines:
        if error:
            continue
        try:
            message = json.loads(line)
            if "open" in message:
                writer = _Writer(message["open"], store)
            elif "metrics" in message:
                writer.metrics(message["metrics"])
            elif "results" in message:
                writer.results(message["results"], message.get("rounded", {}))
            elif "artifact" in message:
                writer.artifact(Path(message["artifact"]))
            elif "model" in message:
                writer.model(message["model"])
            elif "end" in message:
                writer.end(message["end"])
                ended = True
        except Exception as err:  # noqa: BLE001 - any failure of the store ends tracking for this stage
            error = f"{type(err).__name__}: {err}"
    if writer and not ended and not error:  # the stage died without saying so
        try:
            writer.end("KILLED")
        except Exception as err:  # noqa: BLE001
            error = f"{type(err).__name__}: {err}"
    print(f"ERROR {error}" if error else "OK", flush=True)


if __name__ == "__main__":
    _write_from_pipe(sys.stdin)
