"""Stage prepare: hh-rlhf rows -> SFT examples and train/eval prompts (data/prepared/)."""
from pftlab.data import prepare, read_preferences
from pftlab.io import atomic_dir, atomic_write_jsonl
from pftlab.stage import run_stage


def main(p, tracker):
    rows, bad = read_preferences(p["data.raw"], p["data.max_bad_fraction"])
    splits = prepare(rows, p["data.eval_fraction"])
    with atomic_dir("data/prepared") as out:
        for name, records in splits.items():
            atomic_write_jsonl(out / f"{name}.jsonl", records)
    return {"rows_valid": len(rows), "rows_skipped": len(bad),
            "skipped_reasons": sorted({reason for _, reason in bad}),
            **{name: len(records) for name, records in splits.items()}}


if __name__ == "__main__":
    run_stage("prepare", ["seed", "data"], main, "metrics/prepare.json")
