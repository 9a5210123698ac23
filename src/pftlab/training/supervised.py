"""The minibatch loop that SFT and the reward model share (`train_sft`, `train_reward_model`): a seeded shuffle per epoch, then one
`step.training_step` per minibatch (AdamW with the section's warmup, schedule and clipping through
`optimization.Updater`, plain or DeepSpeed, micro-batches; a non-finite step skipped up to the section's
`skip_nonfinite_steps`, else the stage stops), checkpoint and resume."""
import torch
from tqdm.auto import tqdm

from pftlab.algorithms.losses import bradley_terry_loss, sft_loss
from pftlab.core import checkpoint, distributed, train_state
from pftlab.lm.model import pack, pack_pairs, target_mask, token_logprobs
from pftlab.lm.reward_model import score
from pftlab.lm.sft import eval_loss
from pftlab.training import optimization
from pftlab.training.config import SupervisedConfig
from pftlab.training.step import NonFiniteSteps, micro_batching, training_step


def train_supervised(model, examples: list, cfg: SupervisedConfig, seed: int, batch_loss, *, section: str,
                     units=len, evaluate=None, eval_every: int = 25, tracker=None, checkpointer=None, desc="train"):
    """`batch_loss(list of examples) -> (loss, stats dict)`, the loss a mean over `units(examples)` (rows by
    default; SFT: response tokens), which weighs micro-batches and processes (`step.accumulate`);
    `evaluate() -> dict` every `eval_every` steps and at the last. `cfg`: the params section (`sft`,
    `reward_model`) with its optimiser knobs. Returns the per-step history."""
    steps_per_epoch = -(-len(examples) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    micro = micro_batching(cfg.batch_size, cfg.micro_batch_size, distributed.world_size())
    updater = optimization.Updater(model, list(model.parameters()), cfg, total, micro.accumulation, micro.size,
                                   cfg.weight_decay, cfg.deepspeed)
    nonfinite = NonFiniteSteps(cfg.skip_nonfinite_steps or 0, f"{section}.skip_nonfinite_steps", checkpointer)
    generator = torch.Generator().manual_seed(seed)
    run = {"epoch": 0, "order": None, "position": 0, "step": 0, "skipped": 0, "history": []}
    if checkpointer is not None:
        updater.engine_dir = checkpoint.engine_dir(checkpointer.stage)
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        run.update(saved["run"])
        if saved["model"]:  # DeepSpeed: the weights are in its own checkpoint
            train_state.load_trainable_state(model, saved["model"])
        updater.load_state_dict(saved["updater"])
        train_state.set_rng_state(saved["rng"], generator)
    nonfinite.count = run["skipped"]

    def snapshot():
        run["skipped"] = nonfinite.count
        weights = train_state.trainable_state(model) if updater.engine is None else {}
        return {"step": run["step"], "run": run, "model": weights,
                "updater": updater.state_dict(), "rng": train_state.rng_state(generator)}

    model.train()
    bar = tqdm(total=total, initial=run["step"], desc=desc, disable=None)
    while run["epoch"] < cfg.epochs:
        if run["order"] is None:
            run["order"], run["position"] = torch.randperm(len(examples), generator=generator).tolist(), 0
        while run["position"] < len(examples):
            step = run["step"]
            chunk = [examples[j] for j in run["order"][run["position"] : run["position"] + cfg.batch_size]]
            loss, stats, _ = training_step(updater, chunk, batch_loss, micro.size, nonfinite, step,
                                           f"{desc}, epoch {run['epoch']}", units)
            row = {"step": step, "epoch": run["epoch"], "train_loss": loss, **stats}
            if evaluate is not None and (step % eval_every == 0 or step == total - 1):
                row |= evaluate()
                model.train()
            run["history"].append(row)
            if tracker is not None:
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
            run["step"], run["position"] = step + 1, run["position"] + cfg.batch_size
            bar.update(1)
            if checkpointer is not None:
                checkpointer.step_done(run["step"], snapshot)
        run["epoch"], run["order"] = run["epoch"] + 1, None
    bar.close()
    return run["history"]


# --- the two supervised trainings of the pipeline ----------------------------------------------------
def sft_batch_loss(model, pad_id):
    """SFT's loss on a list of (prompt_ids, response_ids): the mean NLL per response token."""
    def batch_loss(chunk):
        seqs = pack([c[0] for c in chunk], [c[1] for c in chunk], pad_id).to(model)
        loss, _ = sft_loss(token_logprobs(model, seqs), target_mask(seqs))
        return loss, {}
    return batch_loss


def sft_units(pad_id):
    """What SFT's loss averages over: response tokens, so a batch's gradient is its per-token mean however it
    is split (the gradient-accumulation fix transformers made in 2024)."""
    return lambda chunk: int(target_mask(pack([c[0] for c in chunk], [c[1] for c in chunk], pad_id)).sum())


def reward_model_batch_loss(rm, pad_id):
    """Bradley-Terry on a list of preference pairs (dicts of prompt_ids / chosen_ids / rejected_ids)."""
    def batch_loss(chunk):
        chosen, rejected = pack_pairs(chunk, pad_id)
        loss, stats = bradley_terry_loss(score(rm, chosen), score(rm, rejected))
        return loss, {"train_accuracy": stats["accuracy"]}
    return batch_loss


def train_sft(model, train, held_out, cfg, pad_id, seed, tracker=None, eval_every=25, checkpointer=None):
    """`train`/`held_out`: lists of (prompt_ids, response_ids). Returns per-step history."""
    return train_supervised(model, train, cfg, seed, sft_batch_loss(model, pad_id), section="sft",
                            units=sft_units(pad_id),
                            evaluate=lambda: {"eval_loss": eval_loss(model, held_out, pad_id)}, eval_every=eval_every,
                            tracker=tracker, checkpointer=checkpointer, desc="sft")


def train_reward_model(rm, train_pairs, cfg, pad_id, seed, tracker=None, checkpointer=None):
    """Bradley-Terry on preference pairs (dicts of prompt_ids / chosen_ids / rejected_ids)."""
    return train_supervised(rm, train_pairs, cfg, seed, reward_model_batch_loss(rm, pad_id), section="reward_model",
                            tracker=tracker, checkpointer=checkpointer, desc="reward model")
