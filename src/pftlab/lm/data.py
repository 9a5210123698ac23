"""hh-rlhf preference rows -> prompts, SFT targets and a deterministic train/eval split.

A row is {"chosen": dialogue, "rejected": dialogue}; the prompt is the text up to and including the last
"\\n\\nAssistant:", the reply is what follows. Malformed rows are skipped and counted; past
`max_bad_fraction` the stage stops and names the file and the first bad rows.
"""
import gzip
import hashlib
import json
import warnings
import zlib

from pftlab.core.errors import DataError

ASSISTANT = "\n\nAssistant:"


def split_dialogue(text: str):
    """(prompt, reply) at the last assistant turn, or None when there is no assistant turn."""
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        return None
    return text[: cut + len(ASSISTANT)], text[cut + len(ASSISTANT) :]


def _check_row(raw: bytes):
    """Parse one line; return (record, None) or (None, reason)."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "undecodable bytes (not UTF-8)"
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg})"
    if not isinstance(row, dict):
        return None, "not a JSON object"
    for key in ("chosen", "rejected"):
        if key not in row:
            return None, f"missing key '{key}'"
        if not isinstance(row[key], str) or not row[key].strip():
            return None, f"empty or non-text '{key}'"
    chosen, rejected = split_dialogue(row["chosen"]), split_dialogue(row["rejected"])
    if chosen is None or rejected is None:
        return None, "no '\\n\\nAssistant:' turn"
    if chosen[0] != rejected[0]:
        return None, "chosen and rejected do not share a prompt"
    if not chosen[1].strip() or not rejected[1].strip():
        return None, "empty reply"
    if chosen[1] == rejected[1]:
        return None, "chosen and rejected are identical"  # no preference to learn from
    return {"prompt": chosen[0], "chosen": chosen[1], "rejected": rejected[1]}, None


def read_preferences(path, max_bad_fraction: float):
    """All valid rows of a .jsonl or .jsonl.gz file, and the list of (line number, reason) skipped."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    rows, bad = [], []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record, reason = _check_row(raw)
        if record is None:
            bad.append((number, reason))
        else:
            rows.append(record)
    total = len(rows) + len(bad)
    if total == 0:
        raise DataError(f"{path}: no rows")
    if bad:
        first = "; ".join(f"line {n}: {r}" for n, r in bad[:5])
        if len(bad) / total > max_bad_fraction:
            raise DataError(
                f"{path}: {len(bad)} of {total} rows are malformed (more than max_bad_fraction="
                f"{max_bad_fraction}); first: {first}"
            )
        warnings.warn(f"{path}: skipped {len(bad)} malformed rows of {total}; first: {first}", stacklevel=2)
    return rows, bad


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
