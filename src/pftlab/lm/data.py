"""Preference data -> prompts, SFT targets and a deterministic train/eval split.

`read_pairs` is the one route in, for the shipped hh-rlhf file (`data.raw`) and for your own data
(`data.source`): `readers` reads the file, folder or hub dataset row by row, `layouts` maps each row to a
prompt (every turn) and two replies and renders them as the model will see them. A row that does not fit
is skipped with its line or row number and reason; past `data.max_bad_fraction` the stage stops naming
the file and the first bad rows. Nothing is flattened or cut here: truncation happens, and is counted,
where text becomes tokens (`lm/model.py`).
"""
import hashlib
import json
import os
import warnings
from collections import Counter
from pathlib import Path

from pftlab.core.errors import DataError
from pftlab.lm import layouts, readers

FEW_EVAL_PROMPTS = 20  # fewer: a held-out mean with an interval too wide to compare methods by
TRACKED_DIR = Path("data/raw")  # prepare's DVC dependency: a local data.source must lie here to be tracked


def source_spec(data: dict) -> dict:
    """`data.source`, or the shipped hh-rlhf file `data.raw` as a source in the hh_rlhf layout."""
    return dict(data["source"]) if data.get("source") else {"id": data["raw"], "layout": "hh_rlhf"}


def check_tracked(spec: dict, key="data.source"):
    """A local source must be inside data/raw/, which prepare depends on: edit it and `dvc repro` reruns
    prepare. A hub dataset must be pinned by revision (what was read is recorded as a digest too)."""
    location = spec["id"]
    if readers.looks_local(location):
        # As written, not resolved: a symlink inside data/raw/ is tracked there (DVC hashes what it points to); and
        # resolved, for a data/raw/ that is itself a link and a path given through it.
        written, resolved = Path(os.path.abspath(os.path.expanduser(location))), Path(location).expanduser().resolve()
        if not (written.is_relative_to(os.path.abspath(TRACKED_DIR)) or resolved.is_relative_to(TRACKED_DIR.resolve())):
            raise DataError(f"{key}.id: {location} is outside {TRACKED_DIR}/, so DVC would not rerun prepare when it "
                            f"changes: copy it there (or `dvc add` it there) and point {key}.id at the copy")
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
    rows, skipped, no_preference, notes = [], list(source.unreadable), [], Counter()
    multi_turn = with_system = 0
    for where, row in source.rows:
        try:
            pair = layouts.to_pair(row, spec["layout"], columns)
        except layouts.NoPreference as reason:
            no_preference.append((where, str(reason)))
            continue
        except layouts.Skip as reason:
            skipped.append((where, str(reason)))
            continue
        prompt, chosen, rejected = layouts.render(pair, tokenizer)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "split_key": split_key(pair)})
        notes.update([pair.note] if pair.note else [])
        multi_turn += sum(m["role"] == "user" for m in pair.messages) > 1
        with_system += pair.messages[0]["role"] == "system"
    total = len(rows) + len(skipped) + len(no_preference)
    first = "; ".join(f"{where}: {reason}" for where, reason in skipped[:5])
    if skipped and len(skipped) / total > max_bad_fraction:
        raise DataError(f"{source.name}: {len(skipped)} of {total} rows malformed (more than data.max_bad_fraction="
                        f"{max_bad_fraction}; ties, {len(no_preference)}, are not counted); first: {first}")
    if skipped:
        warnings.warn(f"{source.name}: skipped {len(skipped)} malformed rows of {total}; first: {first}", stacklevel=2)
    if not rows:
        raise DataError(f"{source.name}: no usable rows ({len(skipped)} malformed, {len(no_preference)} without a preference)")
    adds_system = layouts.template_adds_system_prompt(tokenizer)
    if adds_system and with_system < len(rows):
        warnings.warn(f"{source.name}: the chat template adds the model's default system prompt to the "
                      f"{len(rows) - with_system} prompts that have none", stacklevel=2)
    report = {"source": source.name, "layout": spec["layout"], "source_digest": source.digest,
              "source_revision": source.revision or spec.get("revision") or "",
              "template": "chat template" if layouts.has_chat_template(tokenizer) else "plain",
              "rows_read": total, "rows_valid": len(rows), "rows_skipped": len(skipped) + len(no_preference),
              "rows_malformed": len(skipped), "rows_without_preference": len(no_preference),
              "skipped_by_reason": dict(Counter(reason for _, reason in skipped + no_preference).most_common()),
              "skipped_rows": [f"{where}: {reason}" for where, reason in (skipped + no_preference)[:50]],
              "kept_with_note": dict(notes), "multi_turn_prompts": multi_turn, "system_prompts": with_system,
              "template_adds_system_prompt": adds_system}
    return rows, report


def split_key(pair: layouts.Pair) -> str:
    """What the split hashes: the conversation as written (the text of text layouts, the messages otherwise), not
    its rendering, so switching the chat template never moves a prompt across the split."""
    return pair.plain[0] if pair.plain is not None else json.dumps(pair.messages, ensure_ascii=False, sort_keys=True)


def is_eval_prompt(key: str, eval_fraction: float) -> bool:
    """Deterministic split by hash: independent of row order, and no prompt lands in both."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return bucket < eval_fraction


def prepare(rows, eval_fraction: float) -> dict:
    """SFT examples (prompt, chosen reply), the unique prompts and the preference pairs, per side of the split."""
    out = {"sft_train": [], "sft_eval": [], "prompts_train": {}, "prompts_eval": {}, "pairs_train": [], "pairs_eval": []}
    # Conversations that render alike (whitespace a template trims) are one prompt: the group's smallest key decides
    key = {}
    for row in rows:
        row_key = row.get("split_key", row["prompt"])
        key[row["prompt"]] = min(key.get(row["prompt"], row_key), row_key)
    for row in rows:
        side = "eval" if is_eval_prompt(key[row["prompt"]], eval_fraction) else "train"
        out[f"sft_{side}"].append({"prompt": row["prompt"], "response": row["chosen"]})
        out[f"pairs_{side}"].append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]})
        out[f"prompts_{side}"].setdefault(row["prompt"], None)
    out["prompts_train"] = [{"prompt": p} for p in out["prompts_train"]]
    out["prompts_eval"] = [{"prompt": p} for p in out["prompts_eval"]]
    for side in ("train", "eval"):
        if not out[f"prompts_{side}"]:
            raise DataError(f"data.eval_fraction = {eval_fraction} leaves no {side} prompt among the {len(rows)} rows: "
                            + ("raise it" if side == "eval" else "lower it") + " or bring more rows")
    if len(out["prompts_eval"]) < FEW_EVAL_PROMPTS:
        warnings.warn(f"only {len(out['prompts_eval'])} evaluation prompts (data.eval_fraction = {eval_fraction} of "
                      f"{len(rows)} rows): intervals over prompts will be wide", stacklevel=2)
    return out
