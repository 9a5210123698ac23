"""Stage sft: prompt -> chosen reply, on a GPT-2-style LM from scratch or on a pretrained model
(`model.pretrained`, saved here in Hugging Face format) (models/sft/)."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
from transformers.utils import logging as hf_logging

from pftlab.core.distributed import is_main_process
from pftlab.core.io import atomic_dir, read_jsonl, write_csv
from pftlab.core.params import check_batch
from pftlab.core.pipeline import SFT_CURVE, SFT_EVAL, SFT_MODEL, SFT_TRAIN, TOKENIZER
from pftlab.core.stage import run_stage, stage_checkpointer
from pftlab.lm.hub import pretrained_model
from pftlab.lm.model import Truncation, encode_prompt, encode_response, load_tokenizer, new_policy
from pftlab.training.optimization import full_weights
from pftlab.training.supervised import train_sft


def main(p, tracker):
    hf_logging.set_verbosity_error()
    tok = load_tokenizer(TOKENIZER)
    mp, mr = p["model.max_prompt_tokens"], p["model.max_response_tokens"]
    cut = Truncation()
    encode = lambda rows: [(encode_prompt(tok, r["prompt"], mp, cut), encode_response(tok, r["response"], mr, cut)) for r in rows]
    cfg = p.config("sft")
    limit = cfg.max_examples  # None: all
    train = encode(read_jsonl(SFT_TRAIN)[:limit])
    held_out = encode(read_jsonl(SFT_EVAL)[:limit])
    cut.warn("sft")
    check_batch("sft.batch_size", cfg.batch_size, len(train), "SFT examples")
    if p.get("model.pretrained"):
        model = pretrained_model(p["model.pretrained"], tok)
    else:
        model = new_policy(tok, p["model.n_layer"], p["model.n_embd"], p["model.n_head"], mp + mr + 1)
    parameters = sum(x.numel() for x in model.parameters())  # before ZeRO-3 could partition them
    checkpointer = stage_checkpointer(p, [TOKENIZER, SFT_TRAIN, SFT_EVAL])
    history = train_sft(model, train, held_out, cfg, tok.pad_token_id, p["seed"], tracker, checkpointer=checkpointer)
    with full_weights(model):  # ZeRO-3: gathered on every process, written by rank 0
        if is_main_process():
            with atomic_dir(SFT_MODEL) as out:
                model.save_pretrained(out)
                tok.save_pretrained(out)
            write_csv(SFT_CURVE, history)
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    return {"parameters": parameters, "steps": len(history),
            "train_loss": history[-1]["train_loss"], "eval_loss": evals[-1], "eval_loss_initial": evals[0], **cut.metrics()}


if __name__ == "__main__":
    run_stage("sft", main, models=[SFT_MODEL])
