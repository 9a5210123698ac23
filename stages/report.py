"""Stage report: metrics/report.md and metrics/claims.json: the claims with verdicts, the LLM tasks' tables
(over the training seeds of `training_seeds`, and over other whole runs' seeds that metrics/seeds/ holds), figures and stage times."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
from pftlab.core.pipeline import FIGURES, REPORT
from pftlab.core.stage import run_stage
from pftlab.reporting.report import build_report
from pftlab.reporting.sweep import context_of


def main(p, tracker):
    # Every param is read once, into the sweep's fingerprint: the committed sweep table is shown only beside the
    # params and data it ran with. (Not DVC params here: what changes a fingerprint changes the evaluations too.)
    build_report(p["algorithms"], p["variants"], p["seed"], training_seeds=p["training_seeds"], policy_lr=p["policy.lr"],
                 params_context=context_of(p.tree))
    tracker.log_artifact(REPORT)
    tracker.log_artifact(FIGURES)
    return {"policies": 1 + len(p["algorithms"])}


if __name__ == "__main__":
    run_stage("report", main)
