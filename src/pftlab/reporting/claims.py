"""The papers' eight claims (docs/SETUPS.md) as checks computed from the metrics files, never typed in.

A check is a list of per-seed (or per-prompt) differences that the claim says should be positive. Its
verdict: "reproduced" when the 95% Student-t interval of the mean (core/stats.py, the project's one
interval) lies above zero, "not reproduced" when it lies below, "inconclusive" otherwise (or with fewer
than two values). A claim with several checks is reproduced when all are, not reproduced when any is
not, inconclusive otherwise.
"""
import math
from pathlib import Path
from statistics import mean

from pftlab.core.io import read_jsonl
from pftlab.core.stats import mean_ci, t_half_width
from pftlab.reporting.results import seed_values

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


def check(quantity: str, comparison: str, differences: list, over: str = "seeds", margin: float = 0.0) -> dict:
    """One comparison; `differences` should be > 0 if the claim holds. With a margin, "equal or better":
    the claim holds when the interval of the difference lies above -margin."""
    m, half = mean_ci(differences)
    return _verdict(quantity, comparison, len(differences), over, margin, m, half)


def check_from_summary(quantity: str, comparison: str, m: float, sd: float, n: int, over: str, margin: float = 0.0) -> dict:
    """The same, from a mean, standard deviation and count (the t-interval needs nothing else)."""
    return _verdict(quantity, comparison, n, over, margin, m, math.inf if sd != sd else t_half_width(sd, n))


def _verdict(quantity, comparison, n, over, margin, m, half) -> dict:
    low, high = (-math.inf, math.inf) if math.isinf(half) else (m - half, m + half)
    if low > -margin:
        verdict = REPRODUCED
    elif high < -margin:
        verdict = NOT_REPRODUCED
    else:
        verdict = INCONCLUSIVE
    return {"quantity": quantity, "comparison": comparison, "n": n, "over": over, "mean": m, "ci95": [low, high],
            "margin": margin, "verdict": verdict}


def combine(checks: list) -> str:
    verdicts = [c["verdict"] for c in checks]
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def paired(a: list, b: list) -> list:
    """Per-seed a - b."""
    return [x - y for x, y in zip(a, b)]


# --- the claims ------------------------------------------------------------------------------------
def bandit_claims(bandit: dict) -> dict:
    """Claims 1-5 on Tajwar et al.'s didactic bandit."""
    runs = bandit["runs"]
    final = lambda reward, method, sampling: runs[f"{reward}/{method}/{sampling}"]["final_reward"]
    auc = lambda reward, method, sampling: runs[f"{reward}/{method}/{sampling}"]["mean_reward"]
    methods = [k.split("/")[1] for k in runs if k.startswith("misaligned/") and k.endswith("/offline")]
    claims = {}

    def on_minus_off(reward):
        per_method = [paired(final(reward, m, "on_policy"), final(reward, m, "offline")) for m in methods]
        return [mean(seed) for seed in zip(*per_method)]  # averaged over methods, per seed

    gap_mis, gap_al = on_minus_off("misaligned"), on_minus_off("aligned")
    claims["1"] = [check("final eval reward, mean over methods",
                         "on-policy - offline, misaligned reward (peak where pi_ref is unlikely)", gap_mis),
                   check("final eval reward, mean over methods",
                         "(on-policy - offline gap) misaligned - aligned (peak where pi_ref is likely)", paired(gap_mis, gap_al))]
    reuse = sorted({int(k.split("_")[-1]) for k in runs if "/reuse_" in k})
    if len(reuse) >= 2:  # final rewards saturate; the mean over training measures what the fixed budget buys
        lo, hi = reuse[0], reuse[-1]
        speed = lambda m, t: auc("misaligned", m, f"reuse_{t}")
        drop = lambda m: paired(speed(m, lo), speed(m, hi))
        mid = [t for t in reuse if lo < t < hi]
        checks = [check("mean eval reward over training, best-of-N", f"T={lo} - T={hi} (too much reuse hurts)", drop("best_of_n")),
                  check(f"drop of the mean eval reward from T={lo} to T={hi}", "best-of-N drop - PPO drop (PPO tolerates reuse better)",
                        paired(drop("best_of_n"), drop("ppo")))]
        if mid:
            best_mid = max(mid, key=lambda t: mean(speed("ppo", t)))
            checks.insert(0, check("mean eval reward over training, PPO", f"T={best_mid} - T={lo} (some reuse saves fresh samples)",
                                   paired(speed("ppo", best_mid), speed("ppo", lo))))
        claims["2"] = checks
    neg = [m for m in ("dpo", "ipo") if m in methods]
    ml = [m for m in ("best_of_n", "rwr") if m in methods]
    per_seed = lambda ms, s, f=final: [mean(seed) for seed in zip(*[f("misaligned", m, s) for m in ms])]
    claims["3"] = [check("final eval reward, misaligned, offline", "DPO/IPO - best-of-N/RWR (negative gradient vs maximum likelihood)",
                         paired(per_seed(neg, "offline"), per_seed(ml, "offline")))]
    others = [per_seed([m], s) for m in methods for s in ("offline", "on_policy") if not (m in neg and s == "on_policy")]
    best_other = [max(seed) for seed in zip(*others)]
    claims["4"] = [check("final eval reward, misaligned", "best on-policy DPO/IPO - best of every other method and sampling",
                         paired([max(x) for x in zip(*[per_seed([m], "on_policy") for m in neg])], best_other))]
    seeking = [m for m in ("reinforce", "ppo", "dpo", "ipo") if m in methods]
    claims["5"] = [check("mean eval reward over training (speed), misaligned, on-policy",
                         "reverse-KL methods (REINFORCE, PPO, DPO, IPO) - forward-KL (best-of-N, RWR)",
                         paired(per_seed(seeking, "on_policy", auc), per_seed(ml, "on_policy", auc)))]
    return claims


def token_bandit_claims(tb: dict) -> dict:
    """Claims 1 and 4 on the token-level bandit (the LLM trainer and model, the true reward)."""
    runs = tb["runs"]
    from pftlab.algorithms.table import ALGORITHMS

    names = sorted({k.split("/")[1] for k in runs})
    on = [n for n in names if ALGORITHMS[n].source == "on_policy"]
    off = [n for n in names if ALGORITHMS[n].source == "offline"]
    per_seed = lambda reward, ns: [mean(x) for x in zip(*[runs[f"{reward}/{n}"]["final_reward"] for n in ns])]
    claims = {}
    if on and off:
        gap = lambda reward: paired(per_seed(reward, on), per_seed(reward, off))
        claims["1"] = [check("final eval reward", f"on-policy ({', '.join(on)}) - offline ({', '.join(off)}), misaligned",
                             gap("misaligned")),
                       check("final eval reward", "(on-policy - offline gap) misaligned - aligned",
                             paired(gap("misaligned"), gap("aligned")))]
    contrastive_on = [n for n in on if ALGORITHMS[n].family == "contrastive"]
    others = [n for n in names if n not in contrastive_on]
    if contrastive_on and others:
        best = lambda ns: [max(x) for x in zip(*[runs[f"misaligned/{n}"]["final_reward"] for n in ns])]
        claims["4"] = [check("final eval reward, misaligned", f"best of {', '.join(contrastive_on)} - best of {', '.join(others)}",
                             paired(best(contrastive_on), best(others)))]
    return claims


def coverage_claims(cov: dict) -> dict:
    """Claims 6-7 (and 8's didactic half) on Song et al.'s synthetic problems."""
    r = cov["runs"]
    delta = lambda key, q: paired(r[key][f"{q}_end"], r[key][f"{q}_start"])
    delta_after = lambda key: paired(r[key]["kl_end"], r[key]["kl_epoch1"])
    claims = {
        "6": [check("probability mass on uncovered responses, tabular", "DPO end - start (DPO moves mass onto them)",
                    delta("tabular/dpo", "uncovered_mass")),
              check("probability mass on uncovered responses at the end, tabular", "DPO - RLHF (the reverse KL keeps them in check)",
                    paired(r["tabular/dpo"]["uncovered_mass_end"], r["tabular/rlhf"]["uncovered_mass_end"]))],
        "7": [check(f"log-prob of preferred responses, linear, {m.upper()}", "start - end (falls)",
                    [-d for d in delta(f"linear/{m}", "logp_preferred")]) for m in ("rlhf", "dpo")]
             + [check(f"log-prob of the unseen best response, linear, {m.upper()}", "end - start (rises)",
                      delta(f"linear/{m}", "logp_best")) for m in ("rlhf", "dpo")],
        "8": [check("reverse KL to pi_ref at the end, tabular", "DPO - HyPO (HyPO lower)",
                    paired(r["tabular/dpo"]["kl_end"], r["tabular/hypo"]["kl_end"])),
              check("reverse KL to pi_ref at the end, linear", "DPO - HyPO (HyPO lower)",
                    paired(r["linear/dpo"]["kl_end"], r["linear/hypo"]["kl_end"]))]
             + [check(f"growth of the reverse KL after the first epoch, {kind}"
                      + (f" ({cov['epochs']:.1f} epochs)" if "epochs" in cov else ""),
                      "DPO - HyPO (DPO keeps drifting: overfitting)",
                      paired(delta_after(f"{kind}/dpo"), delta_after(f"{kind}/hypo")))
                for kind in ("tabular", "linear") if "kl_epoch1" in r[f"{kind}/dpo"] and cov.get("epochs", 0) >= 2],
    }
    return claims


CLAIM_TEXT = {
    "1": "On-policy sampling helps when the reward peaks where pi_ref is unlikely, and matters less when it peaks where pi_ref is likely.",
    "2": "Sample reuse (T > 1) saves fresh samples, too much reuse hurts, and PPO tolerates reuse better than best-of-N.",
    "3": "A negative gradient (DPO/IPO) beats offline maximum likelihood when the peak is where pi_ref is unlikely; "
         "during DPO the likelihood of both y_w and y_l can fall.",
    "4": "On-policy sampling and negative gradients are complementary: on-policy DPO/IPO is best.",
    "5": "Mode-seeking objectives (reverse KL) move probability mass faster than mode-covering ones (maximum likelihood).",
    "6": "DPO needs global coverage: without it, DPO can move probability onto uncovered responses; RLHF's reverse KL keeps them in check.",
    "7": "With function approximation, DPO and RLHF both lower the likelihood of preferred responses while raising that of "
         "the unseen best response.",
    "8": "HyPO reaches a lower reverse KL than DPO at equal or better reward, and resists overfitting.",
}


# --- the synthetic LLM task -------------------------------------------------------------------------
# Units are held-out prompts when the run has one training seed (sampling noise only), or training seeds
# when `python -m pftlab.reporting.seeds` has collected other seeds' runs. Values of one unit are paired across
# policies and across gold rewards (the same prompts / the same seeds).
PEAK_WHERE_SFT_IS_LIKELY = {"min_length": False, "skew_length": False, "mode_length": True}
ON_OFF_COUNTERPARTS = (("bon", "offline_bon"), ("rwr", "offline_rwr"), ("online_dpo", "dpo"), ("online_ipo", "ipo"))


def per_prompt(rows: list, key: str) -> list:
    """Mean of `key` over each prompt's samples, in prompt order."""
    sums = {}
    for r in rows:
        sums.setdefault(r["prompt_index"], []).append(r[key])
    return [mean(sums[i]) for i in sorted(sums)]


def _average(values: dict, names: list) -> list:
    return [mean(x) for x in zip(*[values[n] for n in names])]


def _on_off(gold: dict) -> tuple:
    """(on-policy names, offline names, label) of the counterpart pairs present."""
    pairs = [(a, b) for a, b in ON_OFF_COUNTERPARTS if a in gold and b in gold]
    return [a for a, _ in pairs], [b for _, b in pairs], ", ".join(f"{a} vs {b}" for a, b in pairs)


def llm_claims(gold: dict, kl: dict, reward: str, over: str) -> dict:
    """Claims 1, 3, 4 and 8 on one LLM task: `gold[name]` / `kl[name]` = per-unit means of each policy."""
    claims = {}
    peak_likely = PEAK_WHERE_SFT_IS_LIKELY[reward]
    on, off, label = _on_off(gold)
    if on and not peak_likely:
        claims["1"] = [check("gold reward", f"on-policy - offline counterpart ({label})",
                             paired(_average(gold, on), _average(gold, off)), over=over)]
    neg = [n for n in ("dpo", "ipo") if n in gold]
    ml = [n for n in ("pref_ft", "offline_bon", "offline_rwr") if n in gold]
    if neg and ml and not peak_likely:
        claims["3"] = [check("gold reward", f"offline {'/'.join(neg)} - offline {'/'.join(ml)}",
                             paired(_average(gold, neg), _average(gold, ml)), over=over)]
    online = [n for n in ("online_dpo", "online_ipo") if n in gold]
    rest = [n for n in gold if n not in online and n != "sft"]
    if online and rest:
        best_online = max(online, key=lambda n: mean(gold[n]))
        best_rest = max(rest, key=lambda n: mean(gold[n]))
        claims["4"] = [check("gold reward", f"best on-policy contrastive ({best_online}) - best other ({best_rest})",
                             paired(gold[best_online], gold[best_rest]), over=over)]
    if "hypo" in gold and "dpo" in gold:
        claims["8"] = [check("reverse KL to SFT (k1)", "DPO - HyPO (HyPO lower)", paired(kl["dpo"], kl["hypo"]), over=over),
                       check("gold reward", "HyPO - DPO, equal or better within 1 (reward in tokens)",
                             paired(gold["hypo"], gold["dpo"]), over=over, margin=1.0)]
    return claims


def llm_peak_claims(tasks: dict, over: str) -> dict:
    """Claim 1's second half across gold rewards: the on-policy gain is larger where the peak is unlikely.
    `tasks[reward] = gold` as for llm_claims; compares every unlikely-peak task with every likely-peak one."""
    checks = []
    for unlikely, g_u in tasks.items():
        for likely, g_l in tasks.items():
            if PEAK_WHERE_SFT_IS_LIKELY[unlikely] or not PEAK_WHERE_SFT_IS_LIKELY[likely]:
                continue
            on, off, label = _on_off({n: None for n in g_u if n in g_l})
            if on:
                gap = lambda g: paired(_average(g, on), _average(g, off))
                checks.append(check("gold reward", f"(on-policy - offline: {label}) {unlikely} - {likely}",
                                    paired(gap(g_u), gap(g_l)), over=over))
    return {"1": checks} if checks else {}


def dpo_likelihood_check(dpo_eval: dict) -> list:
    """Claim 3's second half, from evaluate@dpo: log pi - log pi_ref of training pairs' y_w and y_l."""
    return [check_from_summary(f"log pi(y_{'w' if side == 'chosen' else 'l'}) - log pi_ref of training pairs, DPO",
                               "before - after (falls)", -dpo_eval[f"logp_{side}_change"], dpo_eval[f"logp_{side}_change_sd"],
                               dpo_eval["likelihood_pairs"], over="preference pairs, one training seed")
            for side in ("chosen", "rejected") if f"logp_{side}_change" in dpo_eval]


def all_claims(bandit: dict = None, coverage: dict = None, token_bandit: dict = None, llm_parts: list = ()) -> dict:
    """Every claim with its checks from whichever settings exist, and a combined verdict.
    `llm_parts`: (setting, claims) pairs from the LLM tasks."""
    parts = []
    if bandit:
        parts.append(("didactic bandit (Tajwar et al.)", bandit_claims(bandit)))
    if token_bandit:
        parts.append(("token-level bandit (Tajwar et al.)", token_bandit_claims(token_bandit)))
    if coverage:
        parts.append(("coverage problems (Song et al.)", coverage_claims(coverage)))
    parts += list(llm_parts)
    out = {}
    for cid, text in CLAIM_TEXT.items():
        checks = [c | {"setting": setting} for setting, claims in parts for c in claims.get(cid, [])]
        out[cid] = {"claim": text, "verdict": combine(checks) if checks else INCONCLUSIVE, "checks": checks}
    return out


def llm_claim_parts(tasks: dict, evals: dict, seed: int, seed_runs: list, root: Path) -> tuple:
    """The LLM tasks' claims over held-out prompts (every policy, one training seed) and, for the policies that
    other training seeds exist for, over training seeds too. Returns (parts, what the intervals vary over)."""
    tasks = {r: t for r, t in tasks.items() if r in PEAK_WHERE_SFT_IS_LIKELY}  # a gold reward to judge by
    over = "held-out prompts, one training seed"
    gold, kl = {}, {}
    for reward, (task, names) in tasks.items():
        for n in names:
            rows = read_jsonl(root / task.eval_samples(n))
            gold.setdefault(reward, {})[n] = per_prompt(rows, "gold")
            kl.setdefault(reward, {})[n] = per_prompt(rows, "kl_k1")
    parts = [(f"synthetic LLM task ({reward})", llm_claims(gold[reward], kl[reward], reward, over)) for reward in gold]
    parts.append(("synthetic LLM task (across gold rewards)", llm_peak_claims(gold, over)))
    gold_s, kl_s = seed_values(evals, seed_runs, tasks)
    if gold_s:
        seeds = [seed] + [r["seed"] for r in seed_runs]
        over_seeds = f"training seeds ({', '.join(map(str, seeds))})"
        parts += [(f"synthetic LLM task ({reward}), policies with {len(seeds)} training seeds",
                   llm_claims(gold_s[reward], kl_s[reward], reward, over_seeds)) for reward in gold_s]
        parts.append(("synthetic LLM task (across gold rewards), training seeds", llm_peak_claims(gold_s, over_seeds)))
        over = f"{over}; for {', '.join(sorted({n for g in gold_s.values() for n in g}))} also {over_seeds}"
    return parts, over
