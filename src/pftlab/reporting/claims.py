"""The papers' eight claims (docs/SETUPS.md) as checks computed from the metrics files, never typed in.

A check is a list of per-seed (or per-prompt) differences that the claim says should be positive. Its
verdict: "reproduced" when the 95% Student-t interval of the mean (core/stats.py, the project's one
interval) lies above zero, "not reproduced" when it lies below, "inconclusive" otherwise (or with fewer
than two values). A claim with several checks is reproduced when all are, not reproduced when any is
not, inconclusive otherwise. Where a comparison exists over training seeds, the same comparison over one
seed's held-out prompts (or preference pairs) is shown as a second line that does not decide the verdict.
"""
import math
from pathlib import Path
from statistics import mean

from pftlab.core.io import read_jsonl
from pftlab.core.stats import mean_ci, t_half_width
from pftlab.reporting.results import seed_values

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


def check(quantity: str, comparison: str, differences: list, over: str = "seeds", margin: float = 0.0,
          reading: str = None) -> dict:
    """One comparison; `differences` should be > 0 if the claim holds. With a margin, "equal or better":
    the claim holds when the interval of the difference lies above -margin. `reading`: which of the claim's
    readings (READINGS) it tests, where it has several."""
    m, half = mean_ci(differences)
    return _verdict(quantity, comparison, len(differences), over, margin, m, half) | ({"reading": reading} if reading else {})


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
    """The claim's verdict from its deciding checks (a second line, `decides: False`, is shown only)."""
    verdicts = [c["verdict"] for c in checks if c.get("decides", True)]
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
    reuse = reuse_claims(runs, bandit.get("reuse_sample_costs", ()))
    if reuse:
        claims["2"] = reuse
    neg = [m for m in ("dpo", "ipo") if m in methods]
    ml = [m for m in ("best_of_n", "rwr") if m in methods]
    per_seed = lambda ms, s, f=final: [mean(seed) for seed in zip(*[f("misaligned", m, s) for m in ms])]
    claims["3"] = [check("final eval reward, misaligned, offline", "DPO/IPO - best-of-N/RWR (negative gradient vs maximum likelihood)",
                         paired(per_seed(neg, "offline"), per_seed(ml, "offline")))]
    others = [per_seed([m], s) for m in methods for s in ("offline", "on_policy") if not (m in neg and s == "on_policy")]
    best_other = [max(seed) for seed in zip(*others)]
    claims["4"] = [check("final eval reward, misaligned", "best on-policy DPO/IPO - best of every other method and sampling "
                         "(best per seed)", paired([max(x) for x in zip(*[per_seed([m], "on_policy") for m in neg])], best_other),
                         reading="literal")]
    negative_gradient = ("reinforce", "ppo", "dpo", "ipo")  # the algorithm table's rows with one
    with_both = [per_seed([m], "on_policy") for m in methods if m in negative_gradient]
    lacking = [per_seed([m], s) for m in methods for s in ("offline", "on_policy") if s == "offline" or m not in negative_gradient]
    if with_both and lacking:
        claims["4"].insert(0, check("final eval reward, misaligned", "best on-policy with negative gradient (REINFORCE, PPO, "
                                    "DPO, IPO) - best lacking either (best per seed)",
                                    paired([max(x) for x in zip(*with_both)], [max(x) for x in zip(*lacking)]), reading="taxonomy"))
    seeking = [m for m in ("reinforce", "ppo", "dpo", "ipo") if m in methods]
    speed = "mean eval reward over training (speed), misaligned, on-policy"
    claims["5"] = [check(speed, "reverse-KL methods (REINFORCE, PPO, DPO, IPO) - forward-KL (best-of-N, RWR)",
                         paired(per_seed(seeking, "on_policy", auc), per_seed(ml, "on_policy", auc)), reading="pooled")]
    claims["5"] += [check(speed, f"{m} - {c} (reverse KL - forward KL)", paired(auc("misaligned", m, "on_policy"),
                                                                                  auc("misaligned", c, "on_policy")),
                          reading="per method") for m in seeking for c in ml]
    return claims


REUSE_METHOD_NAMES = {"best_of_n": "best-of-N", "reinforce": "REINFORCE", "ppo": "PPO"}


def _reuse_cells(runs: dict) -> dict:
    """{method: {T: cell}} of the reuse study (cells with curves: the fixed-steps study of stage bandit)."""
    cells = {}
    for key, cell in runs.items():
        if "/reuse_" in key and "curve" in cell:
            cells.setdefault(key.split("/")[1], {})[int(key.split("_")[-1])] = cell
    return cells


def reward_at_fresh_samples(cell: dict, samples: int):
    """Per-seed eval reward of a cell at the first logged step where it had drawn `samples` fresh samples (None
    when no logged step has)."""
    point = next((p for p in cell["curve"] if p["samples"] == samples), None)
    return None if point is None else point["reward"]


def compute_used(point: dict, collection_samples: int, sample_cost: float) -> float:
    """The compute a run had spent at a logged point, in passes of one sample through a gradient step: each fresh
    sample costs `sample_cost` to draw, each gradient step passes its whole collection once."""
    return sample_cost * point["samples"] + point["step"] * collection_samples


def reward_at_compute(cell: dict, compute: float, sample_cost: float):
    """Per-seed eval reward of a cell when it had spent `compute`, linear between the logged points either side
    (stage bandit logs T = 1 at the steps around every T's compute); None beyond its last point or with no
    logged point on each side."""
    spent = [(compute_used(p, cell["collection_samples"], sample_cost), p["reward"]) for p in cell["curve"]]
    for (c0, r0), (c1, r1) in zip(spent, spent[1:]):
        if c0 <= compute <= c1:
            w = 0.0 if c1 == c0 else (compute - c0) / (c1 - c0)
            return [a + w * (b - a) for a, b in zip(r0, r1)]
    return None


def reuse_claims(runs: dict, sample_costs=()) -> list:
    """Claim 2 on the reuse study (every T runs the same gradient steps, T on each of steps/T collections), per
    method, two parts (READINGS). *Reuse saves fresh samples*: at each T > 1's fresh-sample budget (what it drew in
    its whole run), its reward at the end minus T = 1's reward when T = 1 had drawn as many; the mean over T > 1
    decides, each T is a line of its own. *Too much reuse hurts*: at equal gradient steps, the final reward at the
    best smaller T (the highest mean over seeds) minus at the largest T. PPO's drop against best-of-N's is our own
    comparison, shown without deciding."""
    checks, drops = [], {}
    for method, by_t in _reuse_cells(runs).items():
        name, ts = REUSE_METHOD_NAMES.get(method, method), sorted(by_t)
        if 1 not in by_t or len(ts) < 2:
            continue
        gains = {}
        for t in ts[1:]:
            end = by_t[t]["curve"][-1]
            at_one = reward_at_fresh_samples(by_t[1], end["samples"])
            if at_one is not None:
                gains[t] = paired(end["reward"], at_one)
        if gains:
            quantity = f"eval reward at equal fresh samples, {name}, misaligned"
            checks.append(check(quantity, f"T > 1 ({', '.join(map(str, gains))}; mean over T) - T=1 at each T's budget "
                                "(reuse saves fresh samples)", [mean(x) for x in zip(*gains.values())],
                                reading="reuse saves fresh samples"))
            checks += [check(quantity, f"T={t} - T=1 at T={t}'s budget ({by_t[t]['curve'][-1]['samples']} samples)", g,
                             reading="reuse saves fresh samples") | {"decides": False} for t, g in gains.items()]
        for cost in sample_costs:  # our reading at fixed compute: a line per sample cost, not deciding
            at_compute = {}
            for t in ts[1:]:
                if "collection_samples" in by_t[t]:
                    end = by_t[t]["curve"][-1]
                    at_one = reward_at_compute(by_t[1], compute_used(end, by_t[t]["collection_samples"], cost), cost)
                    if at_one is not None:
                        at_compute[t] = paired(end["reward"], at_one)
            if at_compute:
                checks.append(check(f"eval reward at equal compute (a fresh sample costs {cost:g} x a sample's pass through a "
                                    f"gradient step), {name}, misaligned", f"T > 1 ({', '.join(map(str, at_compute))}; mean "
                                    "over T) - T=1 at each T's compute",
                                    [mean(x) for x in zip(*at_compute.values())], reading="reuse saves compute (ours)")
                              | {"decides": False})
        final = lambda t: by_t[t]["final_reward"]
        largest = ts[-1]
        best = max(ts[:-1], key=lambda t: mean(final(t)))  # the best smaller T: a largest T that is best fails the claim
        drops[method] = paired(final(best), final(largest))
        checks.append(check(f"final eval reward at equal gradient steps, {name}, misaligned",
                            f"best T={best} - largest T={largest} (too much reuse hurts)", drops[method],
                            reading="too much reuse hurts"))
    if "best_of_n" in drops and "ppo" in drops:
        checks.append(check("drop of the final eval reward from the best smaller T to the largest", "best-of-N drop - PPO drop "
                            "(PPO tolerates reuse better: our comparison, not the paper's)",
                            paired(drops["best_of_n"], drops["ppo"]), reading="too much reuse hurts") | {"decides": False})
    return checks


def token_bandit_claims(tb: dict) -> dict:
    """Claims 1 and 4 on the token-level bandit (the LLM trainer and model, the true reward)."""
    runs = tb["runs"]
    from pftlab.algorithms.taxonomy import TAXONOMY

    names = sorted({k.split("/")[1] for k in runs})
    on = [n for n in names if TAXONOMY[n].source == "on_policy"]
    off = [n for n in names if TAXONOMY[n].source == "offline"]
    per_seed = lambda reward, ns: [mean(x) for x in zip(*[runs[f"{reward}/{n}"]["final_reward"] for n in ns])]
    claims = {}
    if on and off:
        gap = lambda reward: paired(per_seed(reward, on), per_seed(reward, off))
        claims["1"] = [check("final eval reward", f"on-policy ({', '.join(on)}) - offline ({', '.join(off)}), misaligned",
                             gap("misaligned")),
                       check("final eval reward", "(on-policy - offline gap) misaligned - aligned",
                             paired(gap("misaligned"), gap("aligned")))]
    best = lambda ns: [max(x) for x in zip(*[runs[f"misaligned/{n}"]["final_reward"] for n in ns])]
    both = [n for n in names if on_policy_with_negative_gradient(n)]
    lacking = [n for n in names if n not in both]
    contrastive_on = [n for n in on if TAXONOMY[n].family == "contrastive"]
    others = [n for n in names if n not in contrastive_on]
    claims["4"] = []
    if both and lacking:
        claims["4"].append(check("final eval reward, misaligned", f"best of {', '.join(both)} (on-policy, negative gradient) - "
                                 f"best of {', '.join(lacking)} (best per seed)", paired(best(both), best(lacking)), reading="taxonomy"))
    if contrastive_on and others:
        claims["4"].append(check("final eval reward, misaligned", f"best of {', '.join(contrastive_on)} - best of {', '.join(others)} "
                                 "(best per seed)", paired(best(contrastive_on), best(others)), reading="literal"))
    if not claims["4"]:
        del claims["4"]
    return claims


# Claim 6's settings (READINGS["6"]): each reading's DPO runs on the multi-armed bandit (the coverage metrics'
# uncovered_mass_by_case). The first is the setting Song et al. state (6.1.2 runs "the same experiments" as 6.1.1, whose
# pi_ref is uniform and whose DPO is "SGD on the offline preference dataset", with independent logits and "5000
# iterations"), so it decides; the others show where the rise appears.
CLAIM6_SETTINGS = {"paper's setting": "sgd/tabular/uniform", "tabular, Adam": "adam/tabular/uniform",
                   "shared features": "sgd/features/uniform", "random start": "sgd/tabular/random",
                   "anti start": "sgd/tabular/anti"}


def rlhf_comparison_is_informative(case: str) -> bool:
    """From a uniform pi_ref with independent logits neither DPO's uncovered mass (SGD: proved, coverage_mass.py) nor
    RLHF's (its optimum pi_ref e^{r_hat}/Z with a reward model of mean 0 on the covered responses: Jensen) can rise,
    so comparing them there says nothing about RLHF keeping a rise in check."""
    _, parametrisation, start = case.split("/")
    return parametrisation != "tabular" or start != "uniform"


def claim6_checks(cov: dict) -> list:
    """Claim 6 per setting (CLAIM6_SETTINGS), each check tagged with its reading."""
    table, steps = cov.get("uncovered_mass_by_case", {}), cov.get("claim6_steps")
    length = f", {steps} DPO iterations" if steps else ""
    checks = []
    for reading, case in CLAIM6_SETTINGS.items():
        if case not in table:
            continue
        v = table[case]
        checks.append(check(f"probability mass on uncovered responses, DPO ({case}{length})",
                            "end - start (rises above pi_ref's)", paired(v["end"], v["start"]), reading=reading))
        if "max" in v and rlhf_comparison_is_informative(case):  # a rise that comes and goes (the anti start's)
            checks.append(check(f"largest logged probability mass on uncovered responses, DPO ({case}{length})",
                                "peak - start (shown)", paired(v["max"], v["start"]), reading=reading) | {"decides": False})
        if "rlhf_end" in v and rlhf_comparison_is_informative(case):
            checks.append(check(f"probability mass on uncovered responses at the end ({case}{length})",
                                "DPO - RLHF from the same pi_ref (RLHF's reverse KL keeps it lower)",
                                paired(v["end"], v["rlhf_end"]), reading=reading))
    return checks


def coverage_claims(cov: dict) -> dict:
    """Claims 6-7 (and 8's didactic half) on Song et al.'s synthetic problems."""
    r = cov["runs"]
    delta = lambda key, q: paired(r[key][f"{q}_end"], r[key][f"{q}_start"])
    delta_after = lambda key: paired(r[key]["kl_end"], r[key]["kl_epoch1"])
    # shown beside claim 6, deciding nothing: HyPO's reverse-KL term holds an uncovered pi(u) at pi_ref(u) e^KL
    hypo_line = [check("probability mass on uncovered responses, tabular, HyPO (coverage runs: Adam, uniform pi_ref)",
                       "end - start (shown; HyPO is not the claim's method)", delta("tabular/hypo", "uncovered_mass"))
                 | {"decides": False}] if "tabular/hypo" in r else []
    claims = {
        "6": claim6_checks(cov) + hypo_line,
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
    "2": "Sample reuse (T > 1) saves fresh samples, and too much reuse hurts.",
    "3": "A negative gradient (DPO/IPO) beats offline maximum likelihood when the peak is where pi_ref is unlikely; "
         "during DPO the likelihood of both y_w and y_l can fall.",
    "4": "On-policy sampling and negative gradients are complementary: on-policy DPO/IPO is best.",
    "5": "Mode-seeking objectives (reverse KL) move probability mass faster than mode-covering ones (maximum likelihood).",
    "6": "DPO needs global coverage: without it, DPO can move probability onto uncovered responses; RLHF's reverse KL keeps them in check.",
    "7": "With function approximation, DPO and RLHF both lower the likelihood of preferred responses while raising that of "
         "the unseen best response.",
    "8": "HyPO reaches a lower reverse KL than DPO at equal or better reward, and resists overfitting.",
}


# How each claim is read: the comparison that tests it (docs/SETUPS.md says the same).
CLAIM_READING = {
    "1": "the on-policy version of a method ends with higher reward than its offline counterpart (same objective) "
         "where the reward peaks where pi_ref is unlikely, and the gap is smaller where it peaks where pi_ref is likely.",
    "2": "two parts, each its own verdict, both deciding. On the bandit every T runs the same gradient steps, T on "
         "each of steps/T collections of fresh samples, for best-of-N, REINFORCE and PPO: *reuse saves fresh samples*: "
         "at each T > 1's fresh-sample budget, its reward is higher than T = 1's when T = 1 had drawn as many samples "
         "(mean over T > 1); *too much reuse hurts*: at equal gradient steps, the final reward at the largest T is "
         "lower than at the best smaller T. Two comparisons of our own are shown beside without deciding: whether PPO "
         "tolerates reuse better than best-of-N, and *reuse saves compute*: T > 1's reward against T = 1's at equal "
         "compute, a fresh sample costing c passes of one sample through a gradient step, for each c in "
         "`bandit.reuse.sample_costs`.",
    "3": "offline DPO/IPO end above offline maximum likelihood (pref-FT, best-of-N, RWR on the same pairs) where the "
         "reward peaks where pi_ref is unlikely; and under DPO the log-likelihood of the training pairs' y_w falls, "
         "as y_l's does.",
    "4": "two readings, each its own verdict. *taxonomy* (the claim's verdict): the best method with both on-policy "
         "samples and a negative gradient (the algorithm table: REINFORCE, RLOO, PPO, on-policy DPO/IPO; HyPO's "
         "on-policy samples enter only its KL term, so it counts as lacking) beats the best method lacking either; "
         "*literal*: the best on-policy DPO/IPO beats the best of every other method. In the LLM task each \"best\" "
         "is chosen on the validation prompts and scored on the held-out ones.",
    "5": "two readings. *pooled* (the claim's verdict): mode-seeking methods (reverse KL: REINFORCE, PPO, DPO, IPO) "
         "together gain reward faster than mode-covering ones (best-of-N, RWR) together; *per method*: each reverse-KL "
         "method faster than each mode-covering one. Speed: mean reward over on-policy training on the bandit.",
    "6": "five settings of Song et al.'s multi-armed bandit (pairs over the first half of the responses only), each its "
         "own verdict: *paper's setting* (the claim's verdict, the setting the paper states: independent logits, pi_ref "
         "uniform, SGD, 5,000 DPO iterations on 10,000 pairs); *tabular, Adam*; *shared features* (logits linear in "
         "random 16-dim features, SGD); *random start* and *anti start* (pi_ref = a random start, or one favouring the "
         "responses the data calls worse; SGD). In each, under offline DPO the probability of the responses no pair "
         "contains ends above its start (pi_ref's), and, where pi_ref is not uniform or the logits are shared, above "
         "RLHF's from the same pi_ref, whose reverse KL keeps it in check. From a uniform pi_ref with independent "
         "logits neither can rise, so no DPO - RLHF comparison is made there.",
    "7": "with a linear (function-approximation) policy, DPO and RLHF both lower the log-probability of the "
         "preferred responses while raising that of the best response, which no pair contains.",
    "8": "two readings. *matched settings* (the claim's verdict; Song et al. run both at one beta and learning rate): "
         "at the same (beta, lr), HyPO's reverse KL to pi_ref is lower than DPO's with reward equal (within 1) or better, "
         "and DPO's KL keeps growing after the first epoch where HyPO's does not; *tuned each*: the same at each "
         "one's selected setting. The LLM task's reward-vs-KL frontier (KL at matched gold reward) is shown beside.",
}
# A claim with two readings: its verdict is the first's; each reading also gets a verdict of its own. A claim in
# EVERY_READING_DECIDES states all its readings at once (parts, not alternatives): its verdict combines them all.
READINGS = {"2": ("reuse saves fresh samples", "too much reuse hurts"), "4": ("taxonomy", "literal"),
            "5": ("pooled", "per method"), "8": ("matched settings", "tuned each")}
EVERY_READING_DECIDES = {"2"}
READINGS["6"] = tuple(CLAIM6_SETTINGS)  # claim 6's settings, the paper's first


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


def llm_claims(gold: dict, kl: dict, reward: str, over: str, validation: dict = None) -> dict:
    """Claims 1, 3, 4 and 8 on one LLM task: `gold[name]` / `kl[name]` = per-unit means of each policy;
    `validation[name]`: its mean gold reward on the validation prompts, which picks claim 4's "best"."""
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
    claims["4"] = _claim_4(gold, over, validation or {})
    if not claims["4"]:
        del claims["4"]
    if "hypo" in gold and "dpo" in gold:  # each at its selected setting
        claims["8"] = [check("reverse KL to SFT (k1)", "DPO - HyPO (HyPO lower), each at its selected setting",
                             paired(kl["dpo"], kl["hypo"]), over=over, reading="tuned each"),
                       check("gold reward", "HyPO - DPO, equal or better within 1 (reward in tokens), each at its selected setting",
                             paired(gold["hypo"], gold["dpo"]), over=over, margin=1.0, reading="tuned each")]
    return claims


def on_policy_with_negative_gradient(name: str) -> bool:
    """Claim 4's taxonomy, read from the algorithm table."""
    from pftlab.algorithms.taxonomy import TAXONOMY

    return TAXONOMY[name].source == "on_policy" and TAXONOMY[name].negative_gradient


def _claim_4(gold: dict, over: str, validation: dict) -> list:
    """Both readings of claim 4 (READINGS), each group's best policy chosen by validation reward when known."""
    names = [n for n in gold if n != "sft"]
    chosen_on = "validation prompts" if all(n in validation for n in names) else "the compared values (no validation)"
    best = lambda group: max(group, key=lambda n: validation.get(n, mean(gold[n])))
    checks = []
    both = [n for n in names if on_policy_with_negative_gradient(n)]
    lacking = [n for n in names if n not in both]
    if both and lacking:
        b, other = best(both), best(lacking)
        checks.append(check("gold reward", f"best on-policy with negative gradient ({b}) - best lacking either ({other}), "
                            f"each chosen on {chosen_on}", paired(gold[b], gold[other]), over=over, reading="taxonomy"))
    online = [n for n in ("online_dpo", "online_ipo") if n in gold]
    rest = [n for n in names if n not in online]
    if online and rest:
        b, other = best(online), best(rest)
        checks.append(check("gold reward", f"best on-policy contrastive ({b}) - best other ({other}), each chosen on "
                            f"{chosen_on}", paired(gold[b], gold[other]), over=over, reading="literal"))
    return checks


def matched_cells(summary: dict, default_lr: float, a: str = "dpo", b: str = "hypo", keys=("beta", "lr")) -> list:
    """The (beta, lr) settings the sweep (metrics/sweep/summary.json) ran for both `a` and `b`: [(setting, row of a,
    row of b)], in the order of `a`'s rows. `b`'s other knobs (HyPO's lam) are held at one value: the one with the
    most such settings, its selection's on a tie (a selection that moved after the matched runs keeps them counting).
    A row without `lr` ran at `default_lr`; earlier rows (other shared params) never count."""
    algorithms = summary.get("algorithms", {})
    if a not in algorithms or b not in algorithms:
        return []
    cell = lambda row: tuple(row["setting"].get(k, default_lr if k == "lr" else None) for k in keys)
    rows_a = [r for r in algorithms[a]["rows"] if not r.get("earlier")]
    rows_b = [r for r in algorithms[b]["rows"] if not r.get("earlier")]
    selected = {k: v for k, v in algorithms[b]["selected"].items() if k not in keys}

    def cells_at(others: dict) -> list:
        at = {}
        for row in rows_b:
            if all(row["setting"].get(k, v) == v for k, v in others.items()):
                at.setdefault(cell(row), row)
        out, seen = [], set()
        for row in rows_a:
            if cell(row) in at and cell(row) not in seen:
                seen.add(cell(row))
                out.append((dict(zip(keys, cell(row))), row, at[cell(row)]))
        return out

    candidates = [selected] + [{k: r["setting"].get(k, v) for k, v in selected.items()} for r in rows_b]
    return max((cells_at(o) for o in candidates), key=len)  # the first longest: the selection's on a tie


def seed_scores(row: dict) -> dict:
    """{training seed: scores} of one sweep row: the experiment's own run (the params' `seed`, shown as "0") and
    the training seeds it ran too (seeds@<algorithm>)."""
    return {"0": row} | (row.get("seeds") or {})


def matched_settings_claims(cells: list) -> dict:
    """Claim 8 as Song et al. ran it: DPO and HyPO at the same (beta, lr), one check over the settings run for both.
    Each setting's difference is the mean over the training seeds both ran there (the KL compared on a log scale,
    since it spans orders of magnitude across settings)."""
    if len(cells) < 2:
        return {}
    log_kl, gold, seed_counts = [], [], []
    for _, d, h in cells:
        d_seeds, h_seeds = seed_scores(d), seed_scores(h)
        common = [s for s in d_seeds if s in h_seeds]
        seed_counts.append(len(common))
        log_kl.append(mean(math.log(max(d_seeds[s]["kl_k1"], 1e-9)) - math.log(max(h_seeds[s]["kl_k1"], 1e-9)) for s in common))
        gold.append(mean(h_seeds[s]["gold_reward"] - d_seeds[s]["gold_reward"] for s in common))
    seeds = (f"{min(seed_counts)} training seeds each" if min(seed_counts) == max(seed_counts)
             else f"{min(seed_counts)}-{max(seed_counts)} training seeds each")
    over = f"(beta, lr) settings run for both ({len(cells)}; each the mean over {seeds}; the sweep's experiments)"
    return {"8": [check("log reverse KL to SFT (k1)", "log KL(DPO) - log KL(HyPO) at the same (beta, lr) (HyPO lower)",
                        log_kl, over=over, reading="matched settings"),
                  check("gold reward", "HyPO - DPO at the same (beta, lr), equal or better within 1",
                        gold, over=over, margin=1.0, reading="matched settings")]}


def frontier(points: list) -> list:
    """The reward-vs-KL frontier of (kl, reward) points: those no other point beats on both (lower or equal KL and
    higher or equal reward), by increasing KL (and so increasing reward)."""
    out = []
    for kl, reward in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or reward > out[-1][1]:
            out.append((kl, reward))
    return out


def kl_at_reward(points: list, reward: float):
    """The least KL at which the frontier of `points` reaches `reward`, linear between frontier points; None above
    its best reward. At or below its first point: that point's KL."""
    front = frontier(points)
    if not front or reward > front[-1][1]:
        return None
    if reward <= front[0][1]:
        return front[0][0]
    for (k0, r0), (k1, r1) in zip(front, front[1:]):
        if r0 <= reward <= r1:
            return k0 + (k1 - k0) * (reward - r0) / (r1 - r0)


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


def dpo_likelihood_check(dpo_evals: list, seeds: list) -> list:
    """Claim 3's second half, from DPO's evaluations (one per training seed, `seeds` in the same order): log pi -
    log pi_ref of training pairs' y_w and y_l falls. Over training seeds (each seed's mean over the pairs) when
    there are several; seed `seeds[0]`'s interval over the pairs is then a second line."""
    checks = []
    for side in ("chosen", "rejected"):
        key, quantity = f"logp_{side}_change", f"log pi(y_{'w' if side == 'chosen' else 'l'}) - log pi_ref of training pairs, DPO"
        if key not in dpo_evals[0]:
            continue
        over_seeds = len(dpo_evals) > 1 and all(key in e for e in dpo_evals)
        if over_seeds:
            checks.append(check(quantity, "before - after (falls)", [-e[key] for e in dpo_evals],
                                over=f"training seeds ({', '.join(map(str, seeds))})"))
        one = check_from_summary(quantity, "before - after (falls)", -dpo_evals[0][key], dpo_evals[0][f"{key}_sd"],
                                 dpo_evals[0]["likelihood_pairs"], over=f"preference pairs, training seed {seeds[0]}")
        checks.append(one | ({"decides": False} if over_seeds else {}))
    return checks


def second_line(claims: dict, deciding: dict) -> dict:
    """`claims` (one seed, over prompts) with every check of a claim that `deciding` (over seeds) also has
    marked as a second line."""
    return {cid: [c | {"decides": False} if deciding.get(cid) else c for c in checks] for cid, checks in claims.items()}


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
        out[cid] = {"claim": text, "reading": CLAIM_READING[cid], "checks": checks}
        readings = READINGS.get(cid, (None,))
        of = lambda reading: [c for c in checks if c.get("reading", readings[0]) == reading]
        deciding = checks if cid in EVERY_READING_DECIDES else of(readings[0])
        out[cid]["verdict"] = combine(deciding) if deciding else INCONCLUSIVE
        if len(readings) > 1:
            out[cid]["verdicts_by_reading"] = {r: combine(of(r)) if of(r) else INCONCLUSIVE for r in readings}
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
    gold_s, kl_s = seed_values(evals, seed_runs, tasks)
    seeds = [seed] + [r["seed"] for r in seed_runs]
    over_seeds = f"training seeds ({', '.join(map(str, seeds))})"
    key = "validation_gold_reward"
    validation = {r: {n: e[key] for n, e in evals.get(r, {}).items() if key in e} for r in gold}  # this run's seed
    runs_of = lambda r, n: [run["tasks"].get(r, {}).get(n, {}) for run in seed_runs]
    # over seeds: the mean over the seeds that scored the validation prompts (a training seed's evaluation skips them,
    # so usually this run's seed alone)
    validation_s = {r: {n: mean([evals[r][n][key]] + [x[key] for x in runs_of(r, n) if key in x]) for n in gold_s[r]
                        if key in evals[r][n]} for r in gold_s}
    by_seeds = {reward: llm_claims(gold_s[reward], kl_s[reward], reward, over_seeds, validation_s[reward]) for reward in gold_s}
    peak_by_seeds = llm_peak_claims(gold_s, over_seeds) if gold_s else {}
    parts = [(f"synthetic LLM task ({reward})", second_line(llm_claims(gold[reward], kl[reward], reward, over, validation[reward]),
                                                             by_seeds.get(reward, {}))) for reward in gold]
    parts.append(("synthetic LLM task (across gold rewards)", second_line(llm_peak_claims(gold, over), peak_by_seeds)))
    if gold_s:
        parts += [(f"synthetic LLM task ({reward}), policies with {len(seeds)} training seeds", by_seeds[reward])
                  for reward in gold_s]
        parts.append(("synthetic LLM task (across gold rewards), training seeds", peak_by_seeds))
        over = (f"{over}; for {', '.join(sorted({n for g in gold_s.values() for n in g}))} also {over_seeds}, "
                "which then decide the verdict (the prompts' check is a second line)")
    return parts, over
