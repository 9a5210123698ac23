"""Stage report: metrics/report.md with the algorithms x metrics table, stage times and figures."""
from pftlab.report import build_report
from pftlab.stage import run_stage


def main(p, tracker):
    build_report(p["algorithms"])
    tracker.log_artifact("metrics/report.md")
    tracker.log_artifact("metrics/figures")
    return {"policies": 1 + len(p["algorithms"])}


if __name__ == "__main__":
    run_stage("report", ["seed", "algorithms"], main, "metrics/report_summary.json")
