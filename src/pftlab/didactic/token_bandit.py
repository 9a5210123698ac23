"""Tajwar et al.'s token-level bandit, on the LLM pipeline's own model and trainer: a 3-layer, 48-dim
GPT-2 with a 100-token vocabulary, one prompt token and 9 generated tokens, reward = the mean over the
generated tokens of the didactic bandit's peaked reward, pi_ref = the bandit's histogram for every token.

The policy is fitted to pi_ref by maximum likelihood on sequences of i.i.d. pi_ref tokens; each
algorithm then runs through `loop.train_policy` with the table's objective, exactly as a policy@
stage does, with the true reward in place of the proxy reward model.
"""
from types import SimpleNamespace

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pftlab.algorithms.losses import sft_loss
from pftlab.algorithms.table import ALGORITHMS
from pftlab.didactic.bandit import ACTIONS, reference_distribution
from pftlab.didactic.config import TokenBanditConfig
from pftlab.lm.model import pack, target_mask, token_logprobs
from pftlab.training.loop import train_policy
from pftlab.training.sources import make_source, sample_and_score

RESPONSE_TOKENS = 9
PAD = 0  # every sequence has the same length, so padding never occurs; `generate` still wants an id
TOKENS = SimpleNamespace(eos_token_id=None, pad_token_id=PAD)


def new_gpt(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=ACTIONS, n_positions=1 + RESPONSE_TOKENS, n_embd=48, n_layer=3, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=PAD, eos_token_id=None,
                        pad_token_id=PAD)
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model


def token_reward_fn(per_token_reward: torch.Tensor):
    """Sequences -> mean reward of their generated tokens."""
    def reward(seqs):
        mask = target_mask(seqs)
        tokens = seqs.input_ids[:, 1:]
        return (per_token_reward[tokens] * mask).sum(-1) / mask.sum(-1)
    return reward


def reference_samples(prompts: list, n: int, generator) -> list:
    ref = reference_distribution()
    return [torch.multinomial(ref, RESPONSE_TOKENS, replacement=True, generator=generator).tolist()
            for _ in range(len(prompts) * n)]


def fit_reference_policy(seed: int, prompts: list, steps: int, batch: int = 64, lr: float = 3e-3):
    """Maximum likelihood on responses of i.i.d. pi_ref tokens after each prompt token."""
    model = new_gpt(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        chosen = [prompts[i] for i in torch.randint(len(prompts), (batch,), generator=g).tolist()]
        seqs = pack(chosen, reference_samples(chosen, 1, g), PAD)
        loss, _ = sft_loss(token_logprobs(model, seqs), target_mask(seqs))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def evaluate(policy, prompts: list, reward_fn, samples: int, seed: int) -> float:
    from pftlab.lm.sampling import sample_responses

    torch.manual_seed(seed)
    repeated = [prompts[i % len(prompts)] for i in range(samples)]
    responses = sample_responses(policy, repeated, RESPONSE_TOKENS, 1.0, samples, None, PAD, desc="token-bandit eval")
    return reward_fn(pack(repeated, responses, PAD)).mean().item()


def run(name: str, per_token_reward, seed: int, cfg: TokenBanditConfig, start_state: dict, train_prompts,
        eval_prompts) -> dict:
    """One algorithm of the table on the token-level bandit, through the LLM trainer, with its hyperparameters
    (`token_bandit.algos.<name>`, the LLM task's dataclass): the eval reward before and after, and the curve of the
    true reward of fresh samples over gradient steps."""
    algorithm, hp = ALGORITHMS[name], cfg.hyperparameters(name)
    reward_fn = token_reward_fn(per_token_reward)
    policy, ref = new_gpt(seed), new_gpt(seed)
    policy.load_state_dict(start_state)
    ref.load_state_dict(start_state)
    ref.eval().requires_grad_(False)
    generation = {"max_new_tokens": RESPONSE_TOKENS, "temperature": 1.0, "batch_size": 256}
    pairs = []
    if algorithm.source != "on_policy":  # two pi_ref samples per prompt, ordered by the true reward
        g = torch.Generator().manual_seed(seed + 7)
        for _ in range(cfg.offline_pairs_per_prompt):
            a, b = reference_samples(train_prompts, 1, g), reference_samples(train_prompts, 1, g)
            for prompt, x, y in zip(train_prompts, a, b):
                rx, ry = (per_token_reward[torch.tensor(t)].mean().item() for t in (x, y))
                pairs.append({"prompt_ids": prompt, "chosen_ids": x if rx >= ry else y, "rejected_ids": y if rx >= ry else x})
    source = make_source(algorithm, hp, pairs=pairs, prompts=train_prompts, generation=generation, reward_fn=reward_fn,
                         tokenizer=TOKENS, seed=seed, batch_size=cfg.batch_size, batch_key="token_bandit.batch_size")
    monitor = lambda policy, ref: sample_and_score(policy, ref, eval_prompts, 2, generation, reward_fn, None, PAD,
                                                   desc="token-bandit monitor")
    start = evaluate(policy, eval_prompts, reward_fn, cfg.eval_samples, seed)
    history = train_policy(algorithm, hp, cfg, seed, policy, ref, source, monitor,
                           progress_desc=f"token bandit {name}")
    curve = [{"step": row["step"], "samples": row["samples"], "reward": row["proxy_reward"]}
             for row in history if "proxy_reward" in row]  # the true reward of fresh samples during training
    return {"start_reward": start, "final_reward": evaluate(policy, eval_prompts, reward_fn, cfg.eval_samples, seed),
            "curve": curve}


def prompts_for(seed: int, n_train: int, n_eval: int):
    rng = np.random.default_rng(seed)
    tokens = rng.permutation(ACTIONS)[: n_train + n_eval].tolist()
    return [[t] for t in tokens[:n_train]], [[t] for t in tokens[n_train:]]
