"""Stage prepare: preference rows (the shipped hh-rlhf file `data.raw`, or your own `data.source`: a file or
folder under data/raw/ or a pinned hub dataset, in one of the layouts of lm/layouts.py) -> SFT examples,
prompts and preference pairs per split (data/prepared/), rendered with the model's chat template if it has
one. Every skipped row is counted with its line and reason in metrics/prepare.json."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
from pftlab.core.io import atomic_dir, atomic_write_jsonl
from pftlab.core.pipeline import PREPARED
from pftlab.core.stage import run_stage
from pftlab.lm.data import check_tracked, prepare, read_pairs, source_spec


def main(p, tracker):
    spec = source_spec(p["data"])
    check_tracked(spec)  # before any download or model load
    tokenizer = None
    if p.get("model.pretrained"):  # its chat template, if any, renders the prompts
        from pftlab.lm.hub import pretrained_tokenizer

        tokenizer = lambda: pretrained_tokenizer(p["model.pretrained"])  # noqa: E731 - after the data is read
    rows, report = read_pairs(spec, p["data.max_bad_fraction"], tokenizer)
    splits = prepare(rows, p["data.eval_fraction"])
    with atomic_dir(PREPARED) as out:
        for name, records in splits.items():
            atomic_write_jsonl(out / f"{name}.jsonl", records)
    reasons = ", ".join(f"{n} {r}" for r, n in report["skipped_by_reason"].items())
    print(f"prepare: {report['source']} ({report['layout']}, {report['template']} template): {report['rows_read']} rows, "
          f"{report['rows_valid']} kept, {report['rows_skipped']} skipped" + (f" ({reasons})" if reasons else "") +
          f"; {report['multi_turn_prompts']} multi-turn prompts, {report['system_prompts']} with a system message")
    return {**report, **{name: len(records) for name, records in splits.items()}}


if __name__ == "__main__":
    run_stage("prepare", main)
