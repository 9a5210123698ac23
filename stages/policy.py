"""Stage policy@<algorithm> (policy_variant@<gold>-<algorithm> with --variant <gold>; policy_seed@<algorithm>-<s>
with --seed <s>, another training seed): fine-tune the SFT policy with one algorithm of the table on the task's
pairs and reward model (<task>/policy/<algorithm>/, metrics/[variants/<gold>/]policy/<algorithm>.json and
curves/policy_<algorithm>.csv; core/paths.py)."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
import dataclasses
import sys

from transformers.utils import logging as hf_logging

from pftlab.algorithms.table import ALGORITHMS
from pftlab.core.distributed import is_main_process
from pftlab.core.io import atomic_dir, read_jsonl, write_csv
from pftlab.core.params import check_algorithm_params
from pftlab.core.paths import SFT_MODEL, task_from_argv
from pftlab.core.stage import run_stage, seed_everything, stage_checkpointer
from pftlab.lm.model import load_tokenizer
from pftlab.lm.reference import policy_and_reference, save_policy, weight_copies
from pftlab.lm.reward_model import load_reward_model, score_sequences
from pftlab.training.loop import train_policy
from pftlab.training.optimization import frozen_model, full_weights, partitioned_loading
from pftlab.training.sources import make_source, sample_and_score

NAME = sys.argv[1] if len(sys.argv) > 1 else ""
TASK = task_from_argv()


def main(p, tracker):
    hf_logging.set_verbosity_error()
    hp = check_algorithm_params(p, NAME)
    seed = p["seed"] if TASK.seed is None else TASK.seed
    if TASK.seed is not None:
        seed_everything(seed)
    algorithm = ALGORITHMS[NAME]
    cfg = p.config("policy")
    if hp.get("lr") is not None:  # the algorithm's own learning rate (the sweep's choice) over policy.lr
        cfg = dataclasses.replace(cfg, lr=hp["lr"])
    generation = {**p["generation"], "max_new_tokens": p["model.max_response_tokens"]}
    tok = load_tokenizer(SFT_MODEL)
    pairs = read_jsonl(TASK.pairs)
    prompts = list({tuple(r["prompt_ids"]): None for r in pairs})  # unique, in file order
    prompts = [list(x) for x in prompts]
    rm = frozen_model(load_reward_model(TASK.reward_model), cfg.deepspeed, partition=False)  # whole, in bf16
    reward_fn = lambda s: score_sequences(rm, s)
    source = make_source(algorithm, hp, pairs=pairs, prompts=prompts, generation=generation, reward_fn=reward_fn,
                         tokenizer=tok, seed=seed, batch_size=cfg.batch_size)
    monitor_prompts = prompts[: cfg.batch_size]
    monitor = lambda policy, ref: sample_and_score(policy, ref, monitor_prompts, 1, generation, reward_fn,
                                                   tok.eos_token_id, tok.pad_token_id, desc="monitor samples")
    checkpointer = stage_checkpointer(p, [SFT_MODEL, TASK.pairs, TASK.reward_model])
    with partitioned_loading(cfg.deepspeed):  # ZeRO-3: no process holds the whole policy or reference
        policy, ref = policy_and_reference(SFT_MODEL, cfg.reference, cfg.lora_rank, cfg.lora_alpha,
                                           bool(cfg.gradient_checkpointing))
    copies = weight_copies(policy, ref)
    if cfg.reference == "frozen_copy":
        ref = frozen_model(ref, cfg.deepspeed)
    history = train_policy(algorithm, hp, cfg, seed, policy, ref, source, monitor, tracker,
                           progress_desc=TASK.stage("policy", NAME), checkpointer=checkpointer)
    with full_weights(policy):
        if is_main_process():
            with atomic_dir(TASK.policy(NAME)) as out:
                save_policy(policy, tok, out)
            write_csv(TASK.curve("policy", NAME), history)
    last = history[-1]
    return {"algorithm": NAME, "source": algorithm.source, "negative_gradient": algorithm.negative_gradient,
            "weight_copies_in_memory": round(copies, 4),
            "steps": len(history), "final_loss": last["loss"], "samples": last["samples"],
            **{k: last[k] for k in ("proxy_reward", "kl_k1", "kl_k3", "margin", "pair_accuracy", "clip_fraction",
                                    "skipped_steps", "zero_stage", "accumulation_steps") if k in last}}


if __name__ == "__main__":
    own_seed = [] if TASK.seed is not None else ["seed"]  # policy_seed@ reads its seed from the command line
    run_stage(TASK.stage("policy", NAME), own_seed + ["model.max_prompt_tokens", "model.max_response_tokens", "generation",
                                                      "policy", f"algos.{NAME}"], main, TASK.metrics("policy", NAME),
              seed_key=own_seed[0] if own_seed else None, models=[TASK.policy(NAME)])
