"""Stage report: metrics/report.md and metrics/claims.json: the claims with verdicts, the LLM tasks' tables
(over training seeds when metrics/seeds/ holds other seeds' runs), figures and stage times."""
from pftlab.core.stage import run_stage
from pftlab.reporting.report import build_report


def main(p, tracker):
    build_report(p["algorithms"], p["variants"], p["seed"])
    tracker.log_artifact("metrics/report.md")
    tracker.log_artifact("metrics/figures")
    return {"policies": 1 + len(p["algorithms"])}


if __name__ == "__main__":
    run_stage("report", ["seed", "algorithms", "variants"], main, "metrics/report_summary.json")
