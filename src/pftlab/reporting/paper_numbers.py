"""What the two papers themselves report for each of the eight claims (src/pftlab/reporting/claims.py), typed in by hand.

This module is the one place where numbers are typed in rather than computed: they are the papers' own
evidence, shown next to our verdicts so a reader can compare, never used to compute a verdict.

Sources, read by hand (the seed texts in `../shared/papers/` of the development workspace, and docs/SETUPS.md):
- Tajwar et al. 2024, "Preference Fine-Tuning of LLMs Should Leverage Suboptimal, On-Policy Data"
  (arXiv 2404.14367): only two *summaries* are available (seeds 000_ and 001_). They carry no number, no
  table and no figure or section reference of the paper, so every Tajwar entry is qualitative and its
  `where` names the summary's part, not a section of the paper.
- Song et al. 2024, "The Importance of Online Data: Understanding Preference Fine-tuning via Coverage"
  (HyPO; seed 002_, full text): numbers are quoted exactly as its Tables 1-3 print them (the value in
  parentheses is the paper's own spread, unlabelled in the text). Its Figures 1-2 survive only as the text
  that describes them: those entries say "(reading)" and give no value.

Rules: a number appears only if the source text prints it; "no number in the text; qualitative: ..."
otherwise. `setting` names the paper's setting closest to the check in claims.py (didactic bandit,
token-level bandit / synthetic LLM task, coverage tabular / linear, TL;DR, UltraFeedback).
"""

TAJWAR, SONG = "Tajwar et al. 2024", "Song et al. 2024"
ALL_SETTINGS = "didactic bandit, synthetic LLM, AlpacaFarm / UltraFeedback (not separated in the summary)"


def _e(paper: str, where: str, setting: str, reading: str) -> dict:
    return {"paper": paper, "where": where, "setting": setting, "reading": reading}


PAPER_EVIDENCE: dict = {
    "1": [
        _e(TAJWAR, "summary 000_, Key Results and Mechanism 1", ALL_SETTINGS,
           "No number in the text; qualitative: on-policy sampling \"significantly outperforms offline methods when optimal responses lie "
           "in low-likelihood regions of the reference policy\"."),
        _e(TAJWAR, "docs/SETUPS.md, Synthetic LLM problems (project's summary of the paper; not in the seed texts)",
           "synthetic LLM task: Min / Skew Length vs Mode Length",
           "No number in the text; qualitative: Min and Skew Length (peak where pi_ref is unlikely) benefit from on-policy sampling, "
           "Mode Length (peak where pi_ref is likely) does not."),
        _e(SONG, "Abstract; Sec. 4 (Thm. 4.1, Thm. 4.2)", "theory: offline vs online under partial coverage",
           "No number (a theorem): global coverage is necessary for DPO/IPO while local KL-ball coverage suffices for online RLHF, "
           "\"one explanation of why online RL methods can perform better than offline methods, especially when the offline preference "
           "data is not diverse enough\"."),
        _e(SONG, "Sec. 5.1.1; Sec. 7", "TL;DR, Pythia 1.4B / 2.8B",
           "No number in the text; qualitative: HyPO's win rate \"is still lower\" than PPO's (PPO's value is cited from Table 1 of "
           "Gao et al. 2024, not printed), i.e. full online RLHF stays ahead of the offline-plus-KL hybrid."),
    ],
    "2": [
        _e(TAJWAR, "summary 000_, Design tradeoffs", "didactic bandit / LLM (not separated)",
           "No number in the text; qualitative: \"More reuse improves sample efficiency but may reduce exploration and cause "
           "overfitting\"."),
        _e(TAJWAR, "summary 000_, Open Question 2; summary 001_", "didactic bandit (reuse ablation)",
           "No number in the text; qualitative: the paper \"discusses the tradeoff but doesn't provide clear guidelines\"; the PPO vs "
           "best-of-N contrast is absent from the seed texts (pftlab reports it as its own comparison, not deciding the claim)."),
    ],
    "3": [
        _e(TAJWAR, "summary 000_, Key Results and Mechanism 2", ALL_SETTINGS,
           "No number in the text; qualitative: DPO/IPO \"learn faster by directly suppressing dispreferred responses\" and outperform "
           "offline supervised methods (Pref-FT, Binary FeedMe)."),
        _e(TAJWAR, "summary 001_", "all settings (not separated)",
           "No number in the text; qualitative: negative gradients are \"particularly beneficial when high-reward responses are in "
           "less-likely regions of the reference policy\"; the y_w / y_l likelihood drop is not mentioned."),
        _e(SONG, "Sec. 2 (Related Work); Sec. 6, Example 6.1", "LLM DPO (cited work); linear bandit theory",
           "No number in the text; qualitative: cites Yuan et al., Pal et al. and Rafailov et al. 2024 for \"a simultaneous decrease in "
           "the likelihood of both preferred and rejected responses\" under DPO, and explains it as extrapolation to unseen responses."),
    ],
    "4": [
        _e(TAJWAR, "summary 000_, Key Results and Executive Summary", ALL_SETTINGS,
           "No number in the text; qualitative: \"The combination of on-policy sampling and negative gradients provides the strongest "
           "performance gains\"."),
        _e(SONG, "Sec. 1 and Sec. 2, describing Tajwar et al. 2024", "as summarised by Song et al.",
           "No number in the text; qualitative: Tajwar et al. \"provide empirical support for the claim that online and contrastive "
           "training provide orthogonal benefits\" and find their combination \"most preferable in practice\"."),
    ],
    "5": [
        _e(TAJWAR, "summary 000_, Key Results and Mechanism 3", "categorical distributions / didactic bandit",
           "No number in the text; qualitative: \"Mode-seeking objectives (reverse KL) redistribute probability mass more efficiently than "
           "mode-covering objectives (forward KL)\"."),
        _e(TAJWAR, "summary 001_", "categorical distributions",
           "No number in the text; qualitative: mode-seeking methods (on-policy sampling or negative gradient) \"can rapidly adjust "
           "probability mass in categorical distributions\"."),
    ],
    "6": [
        _e(SONG, "Sec. 6.1.2, Fig. 2 (Right)", "coverage, tabular: multi-armed bandit, data on the first half of the responses",
           "Fig. 2 Right (reading): over 5000 DPO iterations on 10000 pairs the mean probability of responses outside the data support "
           "increases; no value is given, and no RLHF curve is described for this panel."),
        _e(SONG, "Sec. 4.1 (Prop. 4.1); Sec. 4.3 (Lemma 4.1)", "theory: partial coverage",
           "No number (theorems): a DPO policy can have unbounded reverse KL when global coverage fails, while RLHF's reverse KL stays "
           "bounded under bounded rewards, so RLHF \"does not generate responses outside of the support\" of pi_ref."),
    ],
    "7": [
        _e(SONG, "Sec. 6.1.1, Fig. 2 (Left and middle)", "coverage, linear: 100 responses, 16-dim features, pairs over the first 50",
           "Fig. 2 Left/middle (reading): for both RLHF and DPO the mean log-prob of a random subset of preferred responses decays while "
           "the log-prob of the best response (outside the data) goes up; no values are given."),
        _e(SONG, "Sec. 6, Example 6.1", "theory: linear function approximation, optimal response not in the data",
           "No number (an example): with global coverage in feature space, DPO and reward learning both lower the likelihood of the "
           "data's responses and raise that of the unseen optimal one."),
    ],
    "8": [
        _e(SONG, "Sec. 5.1.1, Table 1", "TL;DR, Pythia 1.4B",
           "HyPO vs DPO: GPT-4 win rate 46.44% (2.39%) vs 42.17% (2.5%), RM score 0.37 (0.05) vs 0.16 (0.05), reverse KL "
           "27.07 (2.34) vs 44.90 (1.29) (the KL column's header is lost in the text; Sec. 5.1.1 names it reverse KL)."),
        _e(SONG, "Sec. 5.1.1, Table 1", "TL;DR, Pythia 2.8B",
           "HyPO vs DPO: GPT-4 win rate 50.50% (1.89%) vs 44.39% (0.4%), RM score 2.51 (0.13) vs 2.43 (0.10), reverse KL "
           "48.98 (4.23) vs 68.95 (3.08)."),
        _e(SONG, "Sec. 5.1.2, Tables 2-3", "UltraFeedback, Llama-3-8B-Instruct (last 4 layers)",
           "HyPO vs DPO: AlpacaEval 2.0 LC win rate 30.7 vs 28.4 (win rate 32.2 vs 30.9), MT-Bench average 8.09 vs 7.75, "
           "Open LLM average 65.51 vs 65.34; no KL is reported for chat."),
        _e(SONG, "Sec. 5.1.3, Fig. 1", "TL;DR, Pythia 2.8B, 5 epochs, first 300 validation prompts",
           "Fig. 1 (reading): over 5 epochs HyPO's validation KL stays below DPO's, \"better at preventing the deviation from the "
           "reference policy caused by overfitting\"; no values are given."),
        _e(SONG, "Sec. 5.1, Sec. 6.1", "coverage, tabular / linear (our checks)",
           "No number in the text: HyPO is run only on TL;DR and UltraFeedback, not on the synthetic coverage problems."),
    ],
}


def paper_evidence_markdown(claim_key) -> str:
    """One markdown table cell: each item "*paper, where*: reading", joined with "<br>"; "" when none is listed."""
    items = PAPER_EVIDENCE.get(str(claim_key), [])
    cell = "<br>".join(f"*{e['paper']}, {e['where']}*: {e['reading']}" for e in items)
    return cell.replace("|", "\\|").replace("\n", " ")
