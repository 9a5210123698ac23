"""Preference data -> prompts, SFT targets and a deterministic train/eval split.

`read_pairs` is the one route in, for the shipped hh-rlhf file (`data.raw`) and for your own data
(`data.source`): `readers` reads the file, folder or hub dataset row by row, `layouts` maps each row to a
prompt (every turn) and two replies and renders them as the model will see them. A row that does not fit
is skipped with its line or row number and reason; past `data.max_bad_fraction` the stage stops naming
the file and the first bad rows. Nothing is flattened or cut here: truncation happens, and is counted,
where text becomes tokens (`lm/model.py`).
"""
import hashlib
import warnings
from collections import Counter
from pathlib import Path

from pftlab.core.errors import DataError
from pftlab.lm import layouts, readers

TRACKED_DIR = Path("data/raw")  # prepare's DVC dependency: a local data.source must lie here to be tracked


def source_spec(data: dict) -> dict:
    """`data.source`, or the shipped hh-rlhf file `data.raw` as a source in the hh_rlhf layout."""
    return dict(data["source"]) if data.get("source") else {"id": data["raw"], "layout": "hh_rlhf"}


def check_tracked(spec: dict, key="data.source"):
    """A local source must be inside data/raw/, which prepare depends on: edit it and `dvc repro` reruns
    prepare. A hub dataset must be pinned by revision (what was read is recorded as a digest too)."""
    location = spec["id"]
    if readers.looks_local(location):
        try:
            Path(location).resolve().relative_to(TRACKED_DIR.resolve())
        except ValueError:
            raise DataError(f"{key}.id: {location} is outside {TRACKED_DIR}/, so DVC would not rerun prepare when it "
                            f"changes: copy it there (or `dvc add` it there) and point {key}.id at the copy") from None
    elif not spec.get("revision"):
        raise DataError(f"{key}.revision: hub dataset '{location}' is not pinned: set a commit sha (or tag) so a "
                        f"rerun reads the same rows")


def read_pairs(spec: dict, max_bad_fraction: float, tokenizer=None, key="data.source") -> tuple:
    """({prompt, chosen, rejected} rows rendered for `tokenizer`'s chat template or the plain one, a report
    for metrics/prepare.json). The prepare stage calls `check_tracked` first."""
    source = readers.read_source(spec["id"], spec.get("split") or "train", spec.get("config"), spec.get("revision"), key)
    columns = spec.get("columns") or {}
    if source.rows:
        layouts.check_columns(source.rows[:100], spec.get("layout"), columns, source.name, key)
    if callable(tokenizer):  # loaded only once the data is known to be readable (offline, the data's error comes first)
        tokenizer = tokenizer()
    rows, skipped, notes = [], list(source.unreadable), Counter()
    multi_turn = with_system = 0
    for where, row in source.rows:
        try:
            pair = layouts.to_pair(row, spec["layout"], columns)
        except layouts.Skip as reason:
            skipped.append((where, str(reason)))
            continue
        prompt, chosen, rejected = layouts.render(pair, tokenizer)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        notes.update([pair.note] if pair.note else [])
        multi_turn += sum(m["role"] == "user" for m in pair.messages) > 1
        with_system += pair.messages[0]["role"] == "system"
    total = len(rows) + len(skipped)
    first = "; ".join(f"{where}: {reason}" for where, reason in skipped[:5])
    if skipped and len(skipped) / total > max_bad_fraction:
        raise DataError(f"{source.name}: {len(skipped)} of {total} rows skipped (more than data.max_bad_fraction="
                        f"{max_bad_fraction}); first: {first}")
    if skipped:
        warnings.warn(f"{source.name}: skipped {len(skipped)} of {total} rows; first: {first}", stacklevel=2)
    if not rows:
        raise DataError(f"{source.name}: no usable rows")
    report = {"source": source.name, "layout": spec["layout"], "source_digest": source.digest,
              "source_revision": source.revision or spec.get("revision") or "",
              "template": "chat template" if layouts.has_chat_template(tokenizer) else "plain",
              "rows_read": total, "rows_valid": len(rows), "rows_skipped": len(skipped),
              "skipped_by_reason": dict(Counter(reason for _, reason in skipped).most_common()),
              "skipped_rows": [f"{where}: {reason}" for where, reason in skipped[:50]],
              "kept_with_note": dict(notes), "multi_turn_prompts": multi_turn, "system_prompts": with_system}
    return rows, report


def is_eval_prompt(prompt: str, eval_fraction: float) -> bool:
    """Deterministic split by prompt hash: independent of row order, and no prompt lands in both."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") / 2**64
    return bucket < eval_fraction


def prepare(rows, eval_fraction: float) -> dict:
    """SFT examples (prompt, chosen reply), the unique prompts and the preference pairs, per side of the split."""
    out = {"sft_train": [], "sft_eval": [], "prompts_train": {}, "prompts_eval": {}, "pairs_train": [], "pairs_eval": []}
    for row in rows:
        side = "eval" if is_eval_prompt(row["prompt"], eval_fraction) else "train"
        out[f"sft_{side}"].append({"prompt": row["prompt"], "response": row["chosen"]})
        out[f"pairs_{side}"].append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]})
        out[f"prompts_{side}"].setdefault(row["prompt"], None)
    out["prompts_train"] = [{"prompt": p} for p in out["prompts_train"]]
    out["prompts_eval"] = [{"prompt": p} for p in out["prompts_eval"]]
    return out
