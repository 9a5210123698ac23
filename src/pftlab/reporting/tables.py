"""The report's markdown: tables and short sections, each written from metrics already read (results.py)
and verdicts already judged (claims.py)."""
import json
import statistics
from pathlib import Path

from pftlab.core.stats import mean_ci
from pftlab.reporting.paper_numbers import paper_evidence_markdown
from pftlab.reporting.results import seed_values

EVAL_COLUMNS = [("gold_reward", "gold reward"), ("proxy_reward", "proxy reward"), ("kl_k1", "KL k1"),
                ("kl_k3", "KL k3"), ("win_rate_vs_sft", "win rate vs SFT"), ("response_length", "length"),
                ("eos_fraction", "ends with EOS")]


# Offline DPO step by step, one line per training seed: the pairs' log-likelihoods, length and KL. The curves'
# log-likelihoods are of each step's own minibatch (other pairs at every step): the change on the same pairs is
# the evaluation's (evaluate@dpo: eval.likelihood_pairs training pairs before and after).
DPO_DIAGNOSIS = [("logp_chosen", "log pi(y_w), each step's minibatch"), ("logp_rejected", "log pi(y_l), each step's minibatch"),
                 ("response_tokens", "length of fresh samples (tokens)"), ("kl_k1", "KL(pi || ref) of fresh samples (k1)")]


def dpo_diagnosis_text(curves: dict, sft: dict, dpo: dict, dpo_by_seed: dict = None) -> list:
    """What the curves and the evaluations say, computed, per seed: the change of log pi on the same training
    pairs (`dpo_by_seed[label]`: that seed's evaluation), and the fresh samples' length and KL from the curve."""
    dpo_by_seed = dpo_by_seed or {}
    change = lambda label, side: (f"{dpo_by_seed[label][f'logp_{side}_change']:+.2f}"
                                  if f"logp_{side}_change" in dpo_by_seed.get(label, {}) else "-")
    lines = ["### Offline DPO, step by step", "",
             f"log pi(y) - log pi_ref(y): the change of the log-likelihood over training, on the same "
             f"{dpo.get('likelihood_pairs', '')} training pairs (mean over pairs, evaluate@dpo).", "",
             "| seed | log pi(y_w) - log pi_ref(y_w), same pairs | log pi(y_l) - log pi_ref(y_l), same pairs | "
             "length of fresh samples: start -> end | KL k1: end |", "|---|---|---|---|---|"]
    for label, rows in curves.items():
        first = lambda k: next((r[k] for r in rows if k in r), float("nan"))
        last = lambda k: next((r[k] for r in reversed(rows) if k in r), float("nan"))
        lines.append(f"| {label} | {change(label, 'chosen')} | {change(label, 'rejected')} | "
                     f"{first('response_tokens'):.1f} -> {last('response_tokens'):.1f} | {last('kl_k1'):.1f} |")
    lines += ["", f"Held-out: DPO gold reward {dpo['gold_reward']:.2f} (SFT {sft['gold_reward']:.2f}), length "
              f"{dpo['response_length']:.1f} (SFT {sft['response_length']:.1f}), ends with EOS {dpo['eos_fraction']:.2f} "
              f"(SFT {sft['eos_fraction']:.2f}), KL k1 {dpo['kl_k1']:.1f}. In the figure, log pi(y_w) and log pi(y_l) "
              "are each step's own minibatch (other pairs at every step), so their trend, not step-to-step moves, is "
              "what they show.", ""]
    return lines


def final_reward_table(runs: dict, title: str) -> list:
    """Rows `reward/method[/sampling]` -> final eval reward, mean [95% CI] over seeds."""
    lines = [f"| {title} | final eval reward, mean [95% CI over seeds] | median | min - max over seeds | seeds |",
             "|---|---|---|---|---|"]
    for key, v in runs.items():
        m, half = mean_ci(v["final_reward"])
        values = sorted(v["final_reward"])
        lines.append(f"| {key} | {m:.3f} [{m - half:.3f}, {m + half:.3f}] | {statistics.median(values):.3f} | "
                     f"{values[0]:.3f} - {values[-1]:.3f} | {len(values)} |")
    return lines


def claims_markdown(claims: dict) -> list:
    """One row per claim: how we read it, our verdict (per reading where it has two), our checks, and beside them
    what the papers report (paper_numbers.py)."""
    lines = ["| claim, and how we test it | verdict | our checks: setting, comparison, mean [95% CI] over n, verdict "
             "| the papers: where, what they report |", "|---|---|---|---|"]
    for cid, c in claims.items():
        checks = "<br>".join((f"[{x['reading']}] " if "reading" in x else "") +
                             f"{x['setting']}: {x['comparison']} ({x['quantity']}): {x['mean']:.3g} "
                             f"[{x['ci95'][0]:.3g}, {x['ci95'][1]:.3g}] over {x['n']} {x['over']}: *{x['verdict']}*"
                             + ("" if x.get("decides", True) else " (second line, not deciding)")
                             for x in c["checks"]) or "no setting measures it in this run"
        verdict = f"**{c['verdict']}**" + "".join(f"<br>{r}: {v}" for r, v in c.get("verdicts_by_reading", {}).items())
        lines.append(f"| {cid}. {c['claim']}<br>*Read as:* {c['reading']} | {verdict} | {checks} | "
                     f"{paper_evidence_markdown(cid) or '-'} |")
    return lines + ["", "The papers' column quotes their own measures (GPT-4 and AlpacaEval win rates against their own "
                    "references, reward-model scores, KL of 1B-8B models); ours are length rewards, length win rates and "
                    "KL of a 1M-parameter model. They are not on one scale: compare directions and verdicts, not numbers."]


def _mean_interval(values: list) -> str:
    m, half = mean_ci(values)
    return f"{m:.3f} ± {half:.3f}" if half != float("inf") else f"{m:.3f}"


def uncovered_mass_section(table: dict, steps: int = None) -> list:
    """Claim 6 examined: the uncovered mass under DPO (and RLHF from the same pi_ref) by optimiser, parametrisation
    and start."""
    length = f"{steps} DPO iterations" if steps else "DPO"
    lines = ["#### Claim 6: where the uncovered mass goes under DPO", "",
             "With independent logits the DPO gradient of a pair is -beta sigma(-m) (e_w - e_l): under SGD the uncovered "
             "logits never move and the covered logits keep their sum, so the uncovered mass rises only if the covered "
             "probabilities become more even. From a start uniform over the covered responses (the paper's pi_ref) "
             "it can never exceed its start (the sum of exponentials at a fixed sum is least when all are equal). "
             "The table runs the paper's bandit under both optimisers, from other starts (random; `anti`: favouring "
             "the responses the data calls worse) and with shared 16-dim features (src/pftlab/didactic/coverage_mass.py, "
             "tests/test_coverage_mass.py; docs/SETUPS.md). RLHF: a Bradley-Terry reward model in the policy's "
             "parametrisation, then the exact KL-regularised objective from the same start as pi_ref; its optimum, "
             "pi_ref e^{r_hat/beta}/Z, is DPO's too, so where they differ it is by how far each optimiser got.", "",
             f"| optimiser / parametrisation / start ({length}) | uncovered mass at start | DPO at end, mean ± 95% "
             "[min, max] | seeds where DPO's rose (end; peak) | RLHF at end, mean ± 95% | change of the covered logits' sum |",
             "|---|---|---|---|---|---|"]
    for case, v in table.items():
        rose = sum(e > s + 1e-6 for s, e in zip(v["start"], v["end"]))
        peaked = sum(x > s + 1e-6 for s, x in zip(v["start"], v["max"]))
        end = f"{_mean_interval(v['end'])} [{min(v['end']):.3f}, {max(v['end']):.3f}]"
        rlhf = _mean_interval(v["rlhf_end"]) if "rlhf_end" in v else "-"
        lines.append(f"| {case} | {_mean_interval(v['start'])} | {end} | {rose}; {peaked} / {len(v['end'])} | {rlhf} | "
                     f"{statistics.mean(v['covered_logit_sum_change']):.2g} |")
    return lines + [""]


def sweep_section(summary: dict, policy_lr: float = None) -> list:
    """The hyperparameter sweep's table per algorithm, best validation reward first, its rule, and where each
    selection sits in its grid (sweep.grid_status; a row without lr ran at `policy_lr`)."""
    from pftlab.reporting.sweep import grid_status

    lines = ["### Hyperparameter sweep", "", f"Selection rule: {summary['rule']}. Each row is one `dvc exp` "
             "(`python -m pftlab.reporting.sweep`, README); the evaluated prompts' reward is shown, never used to select.", "",
             "| algorithm | setting (what varies) | validation gold reward [95% CI over prompts] | validation KL k1 "
             "| evaluated gold reward | |",
             "|---|---|---|---|---|---|"]
    kept = [a for a, e in summary["algorithms"].items() if "kept" in e or any(r.get("earlier") for r in e["rows"])]
    for algorithm, entry in summary["algorithms"].items():
        # only the knobs that differ between the algorithm's rows; an absent lr is policy.lr
        keys = sorted({k for r in entry["rows"] for k in r["setting"]})
        varying = [k for k in keys if len({repr(r["setting"].get(k)) for r in entry["rows"]}) > 1]
        for row in entry["rows"]:
            if row["experiment"] == "workspace" and any(r is not row and r["setting"] == row["setting"] for r in entry["rows"]):
                continue  # the workspace at an experiment's setting: the same numbers twice
            v, half = row["validation_gold_reward"], row.get("validation_gold_reward_ci95", float("nan"))
            shown = {k: row["setting"].get(k, "policy.lr" if k == "lr" else "-") for k in varying}
            setting = ", ".join(f"{k}={x}" for k, x in shown.items()) or "(defaults)"
            mark = "selected" if row["setting"] == entry["selected"] else ("params.yaml" if row["setting"] == entry["current"] else "")
            label = f"{algorithm} (earlier)" if "kept" in entry or row.get("earlier") else algorithm
            lines.append(f"| {label} | {setting} | {v:.2f} [{v - half:.2f}, {v + half:.2f}] | "
                         f"{row.get('validation_kl_k1', float('nan')):.2f} | {row.get('gold_reward', float('nan')):.2f} | {mark} |")
    lines += ["", "Where each selection sits in its grid (scale knobs, values tried at the selection's other knobs; "
              "earlier rows do not count; `python -m pftlab.reporting.sweep extend` queues one step outward for an edge):", "",
              "| algorithm | knob | values tried | selected | |", "|---|---|---|---|---|"]
    for algorithm, entry in summary["algorithms"].items():
        if "kept" in entry:
            lines.append(f"| {algorithm} | - | - | - | kept from an earlier summary: not re-swept under today's params |")
            continue
        for knob, st in grid_status(entry, {"lr": policy_lr}).items():
            lines.append(f"| {algorithm} | {knob} | {', '.join(f'{x:g}' for x in st['tried'])} | {st['selected']:g} | {st['status']} |")
    if kept:
        lines += ["", f"(earlier): rows of {', '.join(kept)} kept from an earlier summary (a sweep run before other "
                  "params changed, or the previous default run): shown, not selected from (a selection made then stays in "
                  "params.yaml)."]
    return lines + [""]


def self_win_rate_sentence(wins_per_prompt: list) -> str:
    """SFT against the independent SFT draw every win rate is judged against: 0.5 in expectation, so its distance
    from 0.5 is the win rate's sampling noise."""
    m, half = mean_ci(wins_per_prompt)
    return (f"The SFT policy's win rate against the independent SFT draw (the opponent of every win rate) is {m:.3f} "
            f"[{m - half:.3f}, {m + half:.3f}] (95% interval over {len(wins_per_prompt)} held-out prompts): both are draws of "
            "one policy, so 0.5 is expected and the distance from it is the two draws' sampling noise. The reference draw "
            "is one draw shared by every win rate of the table, so its own noise shifts them all alike.")


def matched_settings_table(cells: list) -> list:
    """Claim 8 as Song et al. ran it: DPO and HyPO at each (beta, lr) the sweep ran for both, the mean over the
    training seeds both ran there (claims.seed_scores)."""
    from pftlab.reporting.claims import seed_scores

    held = ", ".join(f"{k}={v}" for k, v in cells[0][2]["setting"].items() if k not in ("beta", "lr")) if cells else ""
    lines = ["### DPO and HyPO at the same settings (claim 8)", "",
             "Each (beta, lr) the hyperparameter sweep ran for both (HyPO's other knobs held at one value, the one the most "
             "such settings ran; `claims.matched_cells`), held-out "
             "prompts, the mean over the training seeds both ran at that setting. Song et al. compare the two at one "
             "beta and learning rate." + (f" HyPO's other knobs: {held}." if held else ""), "",
             "| beta | lr | training seeds | DPO gold reward | HyPO gold reward | DPO KL (k1) | HyPO KL (k1) | experiments (DPO, HyPO) |",
             "|---|---|---|---|---|---|---|---|"]
    for setting, d, h in cells:
        d_seeds, h_seeds = seed_scores(d), seed_scores(h)
        common = [s for s in d_seeds if s in h_seeds]
        avg = lambda rows, key: sum(rows[s][key] for s in common) / len(common)
        lines.append(f"| {setting['beta']:g} | {setting['lr']:g} | {len(common)} | {avg(d_seeds, 'gold_reward'):.2f} | "
                     f"{avg(h_seeds, 'gold_reward'):.2f} | {avg(d_seeds, 'kl_k1'):.3g} | {avg(h_seeds, 'kl_k1'):.3g} | "
                     f"{d['experiment']}, {h['experiment']} |")
    return lines


def frontier_table(points: dict) -> list:
    """KL at matched gold reward on the DPO and HyPO frontiers (claims.kl_at_reward), at each frontier point's reward
    inside the range both reach."""
    from pftlab.reporting.claims import frontier, kl_at_reward

    xy = {n: [(k, r) for k, r, _ in pts] for n, pts in points.items()}
    low = max(min(r for _, r in v) for v in xy.values())
    high = min(max(r for _, r in v) for v in xy.values())
    levels = sorted({r for v in xy.values() for _, r in frontier(v) if low <= r <= high})
    lines = ["The reward-vs-KL frontier: every DPO and HyPO run at hand (the sweep's experiments and the training "
             "seeds); at each gold reward, the least KL at which each method's frontier reaches it (linear between "
             "frontier points; `reporting/claims.py` `kl_at_reward`).", "",
             "| gold reward | DPO: least KL (k1) | HyPO: least KL (k1) |", "|---|---|---|"]
    for r in levels:
        d, h = kl_at_reward(xy["dpo"], r), kl_at_reward(xy["hypo"], r)
        lines.append(f"| {r:.2f} | {d:.3g} | {h:.3g} |")
    return lines if levels else lines[:2] + ["The two methods' rewards do not overlap: no matched reward."]


def seeds_table(evals: dict, seed: int, seed_runs: list) -> list:
    """One row per policy with other training seeds: each seed's held-out gold reward, then the mean and its
    95% interval over seeds, and the same for KL."""
    seeds = [seed] + [r["seed"] for r in seed_runs]
    lines = ["| gold reward | policy | " + " | ".join(f"seed {s}" for s in seeds) +
             " | gold reward, mean [95% CI over seeds] | KL k1, mean [95% CI over seeds] |", "|---" * (len(seeds) + 4) + "|"]
    gold, kl = seed_values(evals, seed_runs, evals)
    for reward, policies in gold.items():
        for n, values in policies.items():
            (g, g_half), (k, k_half) = mean_ci(values), mean_ci(kl[reward][n])
            lines.append(f"| {reward} | {n} | " + " | ".join(f"{v:.2f}" for v in values) +
                         f" | {g:.2f} [{g - g_half:.2f}, {g + g_half:.2f}] | {k:.2f} [{k - k_half:.2f}, {k + k_half:.2f}] |")
    return lines


def eval_table(evals: dict) -> list:
    """One row per policy; the gold reward's ± is the half-width of its 95% interval over held-out prompts."""
    lines = ["| policy | " + " | ".join(c[1] for c in EVAL_COLUMNS) + " |", "|---" * (len(EVAL_COLUMNS) + 1) + "|"]
    for n, e in evals.items():
        cells = [f"{e['gold_reward']:.2f} ± {e['gold_reward_ci95']:.2f}"] + [f"{e[k]:.3f}" for k, _ in EVAL_COLUMNS[1:]]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def rm_sentence(path) -> str:
    rm = json.loads(Path(path).read_text())
    text = f"Reward model on held-out pairs: label accuracy {rm['held_out_label_accuracy']:.3f}"
    if "held_out_gold_correlation" not in rm:
        return text + f" (untrained {rm['held_out_label_accuracy_untrained']:.3f})."
    return text + (f", gold-order accuracy {rm['held_out_gold_order_accuracy']:.3f}, correlation with gold "
                   f"{rm['held_out_gold_correlation']:.3f}.")
