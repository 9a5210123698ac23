"""One policy run of the LLM task: fine-tune the SFT policy with one algorithm of the table on a task's pairs and
reward model, and save it where `Task` says. Stage policy@<algorithm> runs it once (params `seed`); stage
seeds@<algorithm> runs it again for each training seed, in one process."""
import dataclasses

from transformers.utils import logging as hf_logging

from pftlab.algorithms.table import ALGORITHMS
from pftlab.core.distributed import is_main_process
from pftlab.core.io import atomic_dir, read_jsonl, write_csv
from pftlab.core.params import check_algorithm_params
from pftlab.core.paths import Task
from pftlab.core.pipeline import SFT_MODEL
from pftlab.core.stage import seed_everything, stage_checkpointer
from pftlab.lm.model import load_tokenizer
from pftlab.lm.reference import policy_and_reference, save_policy, weight_copies
from pftlab.lm.reward_model import load_reward_model, score_sequences
from pftlab.training.loop import train_policy
from pftlab.training.optimization import frozen_model, full_weights, partitioned_loading
from pftlab.training.sources import make_source, sample_and_score


def train_policy_run(p, tracker, name: str, task: Task) -> dict:
    """Train policy `name` on `task`; write its model and curve; return its final training metrics."""
    hf_logging.set_verbosity_error()
    hp = check_algorithm_params(p, name)
    seed = p["seed"] if task.seed is None else task.seed
    if task.seed is not None:
        seed_everything(seed)
    algorithm = ALGORITHMS[name]
    cfg = p.config("policy")
    if hp.lr is not None:  # the algorithm's own learning rate (the sweep's choice) over policy.lr
        cfg = dataclasses.replace(cfg, lr=hp.lr)
    generation = {**p["generation"], "max_new_tokens": p["model.max_response_tokens"]}
    tok = load_tokenizer(SFT_MODEL)
    pairs = read_jsonl(task.pairs)
    prompts = list({tuple(r["prompt_ids"]): None for r in pairs})  # unique, in file order
    prompts = [list(x) for x in prompts]
    rm = frozen_model(load_reward_model(task.reward_model), cfg.deepspeed, partition=False)  # whole, in bf16
    reward_fn = lambda s: score_sequences(rm, s)
    source = make_source(algorithm, hp, pairs=pairs, prompts=prompts, generation=generation, reward_fn=reward_fn,
                         tokenizer=tok, seed=seed, batch_size=cfg.batch_size)
    monitor_prompts = prompts[: cfg.batch_size]
    monitor = lambda policy, ref: sample_and_score(policy, ref, monitor_prompts, 1, generation, reward_fn,
                                                   tok.eos_token_id, tok.pad_token_id, desc="monitor samples")
    checkpointer = stage_checkpointer(p, [SFT_MODEL, task.pairs, task.reward_model])
    with partitioned_loading(cfg.deepspeed):  # ZeRO-3: no process holds the whole policy or reference
        policy, ref = policy_and_reference(SFT_MODEL, cfg.reference, cfg.lora_rank, cfg.lora_alpha,
                                           bool(cfg.gradient_checkpointing))
    copies = weight_copies(policy, ref)
    if cfg.reference == "frozen_copy":
        ref = frozen_model(ref, cfg.deepspeed)
    history = train_policy(algorithm, hp, cfg, seed, policy, ref, source, monitor, tracker,
                           progress_desc=task.stage("policy", name), checkpointer=checkpointer)
    with full_weights(policy):
        if is_main_process():
            with atomic_dir(task.policy(name)) as out:
                save_policy(policy, tok, out)
            write_csv(task.curve("policy", name), history)
    last = history[-1]
    return {"algorithm": name, "source": algorithm.source, "negative_gradient": algorithm.negative_gradient,
            "weight_copies_in_memory": round(copies, 4),
            "steps": len(history), "final_loss": last["loss"], "samples": last["samples"],
            **{k: last[k] for k in ("proxy_reward", "kl_k1", "kl_k3", "margin", "pair_accuracy", "clip_fraction",
                                    "skipped_steps", "zero_stage", "accumulation_steps") if k in last}}
