"""Stage token_bandit: Tajwar et al.'s token-level bandit through the LLM trainer, offline and on-policy
methods on the aligned and misaligned rewards over several seeds (metrics/didactic/token_bandit.json)."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
from statistics import mean

from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from pftlab.core.stage import run_stage
from pftlab.didactic import bandit, token_bandit


def main(p, tracker):
    hf_logging.set_verbosity_error()
    cfg = p.config("token_bandit").check_algorithms(p.path)
    peaks = p["token_bandit.rewards"]  # a mapping, in the file's order
    results = {}
    starts = {}
    jobs = [(r, a, s) for r in peaks for a in cfg.algorithms for s in cfg.seeds]
    for reward_name, name, seed in tqdm(jobs, desc="token-bandit runs", disable=None):
        train_prompts, eval_prompts = token_bandit.prompts_for(seed, cfg.train_prompts, cfg.eval_prompts)
        if seed not in starts:  # the policy fitted to pi_ref, shared by every run of this seed
            starts[seed] = token_bandit.fit_reference_policy(seed, train_prompts, cfg.fit_steps).state_dict()
        reward = bandit.peaked_reward(peaks[reward_name], cfg.reward_width)
        out = token_bandit.run(name, reward, seed, cfg, starts[seed], train_prompts, eval_prompts)
        entry = results.setdefault(f"{reward_name}/{name}", {"start_reward": [], "final_reward": [], "samples": []})
        entry["start_reward"].append(out["start_reward"])
        entry["final_reward"].append(out["final_reward"])
        entry["samples"].append(out["curve"][-1]["samples"] if out["curve"] else 0)
    tracker.log_metrics({f"{k.replace('/', '.')}.final_reward": mean(v["final_reward"]) for k, v in results.items()})
    return {"seeds": cfg.seeds, "runs": results}


if __name__ == "__main__":
    run_stage("token_bandit", main, seed_key=None)
