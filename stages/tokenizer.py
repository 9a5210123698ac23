"""Stage tokenizer: a byte-level BPE trained on the SFT training text, or a pretrained model's own
tokenizer (`model.pretrained`, with a padding token of its own) (models/tokenizer/)."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
from pftlab.core.io import atomic_dir, read_jsonl
from pftlab.core.pipeline import SFT_TRAIN, TOKENIZER
from pftlab.core.stage import run_stage
from pftlab.lm.hub import pretrained_tokenizer
from pftlab.lm.tokenizer import train_tokenizer


def main(p, tracker):
    rows = read_jsonl(SFT_TRAIN)
    if p.get("model.pretrained"):
        tokenizer = pretrained_tokenizer(p["model.pretrained"])
    else:
        tokenizer = train_tokenizer((r["prompt"] + r["response"] for r in rows), p["tokenizer.vocab_size"])
    with atomic_dir(TOKENIZER) as out:
        tokenizer.save_pretrained(out)
    sample = rows[0]["prompt"] + rows[0]["response"]
    return {"vocab_size": len(tokenizer), "chars_per_token_first_row": len(sample) / len(tokenizer(sample)["input_ids"])}


if __name__ == "__main__":
    run_stage("tokenizer", main)
