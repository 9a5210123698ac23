"""Stage reward_model (reward_model_variant@<gold> with --variant <gold>): SFT backbone + scalar head trained
with Bradley-Terry on the task's pairs (<task>/reward_model/)."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
import numpy as np
from transformers.utils import logging as hf_logging

from pftlab.core.distributed import is_main_process
from pftlab.core.io import atomic_dir, read_jsonl, write_csv
from pftlab.core.params import check_batch
from pftlab.core.paths import task_from_argv
from pftlab.core.pipeline import SFT_MODEL
from pftlab.core.stage import run_stage, stage_checkpointer
from pftlab.lm.model import load_tokenizer
from pftlab.lm.reward_model import evaluate_reward_model, new_reward_model
from pftlab.training.optimization import full_weights
from pftlab.training.supervised import train_reward_model


def main(p, tracker):
    task = task_from_argv()
    hf_logging.set_verbosity_error()
    tok = load_tokenizer(SFT_MODEL)
    pairs = read_jsonl(task.pairs)
    order = np.random.default_rng(p["seed"]).permutation(len(pairs))
    cfg = p.config("reward_model")
    n_eval = max(1, int(round(len(pairs) * cfg.eval_fraction)))
    held_out, train = [pairs[i] for i in order[:n_eval]], [pairs[i] for i in order[n_eval:]]
    check_batch("reward_model.batch_size", cfg.batch_size, len(train), "training pairs")
    rm = new_reward_model(SFT_MODEL)
    before = evaluate_reward_model(rm, held_out, tok.pad_token_id)
    checkpointer = stage_checkpointer(p, [SFT_MODEL, task.pairs])
    history = train_reward_model(rm, train, cfg, tok.pad_token_id, p["seed"], tracker, checkpointer=checkpointer)
    after = evaluate_reward_model(rm, held_out, tok.pad_token_id)
    with full_weights(rm):  # ZeRO-3: gathered on every process, written by rank 0
        if is_main_process():
            with atomic_dir(task.reward_model) as out:
                rm.save_pretrained(out)
                tok.save_pretrained(out)
            write_csv(task.curve("reward_model"), history)
    return {"held_out_" + k: v for k, v in after.items()} | {"held_out_label_accuracy_untrained": before["label_accuracy"],
                                                             "train_pairs": len(train), "steps": len(history)}


if __name__ == "__main__":
    task = task_from_argv()
    run_stage(task.stage("reward_model"), main, models=[task.reward_model])
