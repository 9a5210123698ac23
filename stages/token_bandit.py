"""Stage token_bandit: Tajwar et al.'s token-level bandit through the LLM trainer, offline and on-policy
methods on the aligned and misaligned rewards over several seeds (metrics/didactic/token_bandit.json)."""
from statistics import mean

from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from pftlab import bandit, token_bandit
from pftlab.params import TRAINER_KNOBS
from pftlab.stage import run_stage


def main(p, tracker):
    hf_logging.set_verbosity_error()
    t = p["token_bandit"]
    cfg = {k: t[k] for k in TRAINER_KNOBS + ("offline_pairs_per_prompt", "eval_samples")}
    results = {}
    starts = {}
    jobs = [(r, a, s) for r in t["rewards"] for a in t["algorithms"] for s in t["seeds"]]
    for reward_name, name, seed in tqdm(jobs, desc="token-bandit runs", disable=None):
        train_prompts, eval_prompts = token_bandit.prompts_for(seed, t["train_prompts"], t["eval_prompts"])
        if seed not in starts:  # the policy fitted to pi_ref, shared by every run of this seed
            starts[seed] = token_bandit.fit_reference_policy(seed, train_prompts, t["fit_steps"]).state_dict()
        reward = bandit.peaked_reward(t["rewards"][reward_name], t["reward_width"])
        out = token_bandit.run(name, reward, seed, cfg, dict(t["hp"]), starts[seed], train_prompts, eval_prompts)
        entry = results.setdefault(f"{reward_name}/{name}", {"start_reward": [], "final_reward": [], "samples": []})
        entry["start_reward"].append(out["start_reward"])
        entry["final_reward"].append(out["final_reward"])
        entry["samples"].append(out["curve"][-1]["samples"] if out["curve"] else 0)
    tracker.log_metrics({f"{k.replace('/', '.')}.final_reward": mean(v["final_reward"]) for k, v in results.items()})
    return {"seeds": t["seeds"], "runs": results}


if __name__ == "__main__":
    run_stage("token_bandit", ["token_bandit"], main, "metrics/didactic/token_bandit.json", seed_key=None)
