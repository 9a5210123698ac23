"""What every stage entry point shares: params check, seeding, MLflow run, timing, clean errors."""
import random
import sys
import time

from .errors import PftlabError
from .io import atomic_write_json
from .params import load_params
from .tracking import Tracker


def seed_everything(seed: int):
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_stage(name: str, sections: list, main, metrics_path: str, seed_key="seed", params_path="params.yaml"):
    """Run `main(params, tracker) -> metrics dict`; write the metrics (plus wall time) atomically.

    A PftlabError (bad param, bad data) ends the stage with its one-line message and exit status 1.
    """
    start = time.time()
    try:
        params = load_params(params_path).check(*sections)
        if seed_key is not None:  # None: the stage seeds each of its runs itself
            seed_everything(params[seed_key])
        with Tracker(name, params.section(*sections)) as tracker:
            metrics = main(params, tracker)
            metrics["seconds"] = round(time.time() - start, 2)
            tracker.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            atomic_write_json(metrics_path, metrics)
            tracker.log_artifact(metrics_path)
    except PftlabError as err:
        print(f"error in stage '{name}': {err}", file=sys.stderr)
        sys.exit(1)
    print(f"stage '{name}' done in {time.time() - start:.1f}s -> {metrics_path}")
