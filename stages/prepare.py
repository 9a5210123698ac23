"""Stage prepare: preference rows (the shipped hh-rlhf file, or `data.source`: a Hugging Face dataset
or local copy mapped by its layout) -> SFT examples, prompts and preference pairs per split (data/prepared/)."""
from pftlab.core.io import atomic_dir, atomic_write_jsonl
from pftlab.core.stage import run_stage
from pftlab.lm.data import prepare, read_preferences
from pftlab.lm.hub import load_preference_dataset


def main(p, tracker):
    if p.get("data.source"):
        rows, bad = load_preference_dataset(p["data.source"])
    else:
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
