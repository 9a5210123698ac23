"""Stage tokenizer: a byte-level BPE trained on the SFT training text (models/tokenizer/)."""
from pftlab.io import atomic_dir, read_jsonl
from pftlab.stage import run_stage
from pftlab.tokenizer import train_tokenizer


def main(p, tracker):
    rows = read_jsonl("data/prepared/sft_train.jsonl")
    tokenizer = train_tokenizer((r["prompt"] + r["response"] for r in rows), p["tokenizer.vocab_size"])
    with atomic_dir("models/tokenizer") as out:
        tokenizer.save_pretrained(out)
    sample = rows[0]["prompt"] + rows[0]["response"]
    return {"vocab_size": len(tokenizer), "chars_per_token_first_row": len(sample) / len(tokenizer(sample)["input_ids"])}


if __name__ == "__main__":
    run_stage("tokenizer", ["seed", "tokenizer"], main, "metrics/tokenizer.json")
