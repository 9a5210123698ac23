"""Stage pairs (pairs_variant@<gold> with --variant <gold>): the SFT sample pairs labelled by a gold
reward through Bradley-Terry (Tajwar et al.'s synthetic LLM problem), or with `pairs.source: human` the
data's own labelled pairs, judged later by the reward model. Writes <task>/pairs/{pairs.jsonl, gold.json}."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
import numpy as np

from pftlab.core.io import atomic_dir, atomic_write_json, atomic_write_jsonl, read_jsonl
from pftlab.core.paths import task_from_argv
from pftlab.core.pipeline import PAIRS_TRAIN, SFT_MODEL, SFT_SAMPLES
from pftlab.core.stage import run_stage
from pftlab.lm.gold import ends_with_eos, gold_reward, label_pair, length_mode, response_length, skew_keep_mask
from pftlab.lm.model import Truncation, encode_prompt, encode_response, load_tokenizer


def human_pairs(p, tok, task):
    """The labelled training pairs of the data, tokenised; pairs the token caps make identical are dropped."""
    mp, mr = p["model.max_prompt_tokens"], p["model.max_response_tokens"]
    pairs, identical, cut = [], 0, Truncation()
    for r in read_jsonl(PAIRS_TRAIN)[: p["pairs.max_prompts"]]:
        chosen, rejected = encode_response(tok, r["chosen"], mr, cut), encode_response(tok, r["rejected"], mr, cut)
        if chosen == rejected:
            identical += 1
            continue
        pairs.append({"prompt_ids": encode_prompt(tok, r["prompt"], mp, cut), "chosen_ids": chosen, "rejected_ids": rejected,
                      "chosen_text": r["chosen"], "rejected_text": r["rejected"]})
    with atomic_dir(task.pairs_dir) as out:
        atomic_write_jsonl(out / "pairs.jsonl", pairs)
        atomic_write_json(out / "gold.json", {"reward": "reward_model"})  # no gold: the RM judges
    eos = tok.eos_token_id
    cut.warn(task.stage("pairs"))
    return {"pairs": len(pairs), "gold_reward": "reward_model", "identical_after_truncation": identical, **cut.metrics(),
            "pair_mean_length": float(np.mean([response_length(x[k], eos) for x in pairs for k in ("chosen_ids", "rejected_ids")]))}


def main(p, tracker):
    task, tok = task_from_argv(), load_tokenizer(SFT_MODEL)
    if p.get("pairs.source") == "human":  # never with variants.rewards (core/params.py CROSS_SECTION_RULES)
        return human_pairs(p, tok, task)
    eos = tok.eos_token_id
    rows = read_jsonl(SFT_SAMPLES)
    prompts = [r["prompt_ids"] for r in rows]
    responses = [y for r in rows for y in r["responses"]]  # response 2i and 2i+1 answer prompt i
    lengths = np.array([response_length(r, eos) for r in responses])
    completed = [ends_with_eos(r, eos) for r in responses]
    gold_spec = {"reward": task.variant or p["gold.reward"], "mode": length_mode(lengths.tolist(), completed)}
    gold = gold_reward(gold_spec, lengths)
    rng = np.random.default_rng(p["seed"])
    keep = np.ones(len(prompts), dtype=bool)
    if gold_spec["reward"] == "skew_length":
        keep = skew_keep_mask(lengths[0::2], lengths[1::2], p["gold.skew_quantile"], p["gold.skew_keep"], rng)
    pairs, agree = [], []
    for i in np.flatnonzero(keep):
        a, b = 2 * i, 2 * i + 1
        first = label_pair(gold[a], gold[b], p["pairs.bt_scale"], rng)
        w, l = (a, b) if first else (b, a)
        pairs.append({"prompt_ids": prompts[i], "chosen_ids": responses[w], "rejected_ids": responses[l],
                      "chosen_gold": float(gold[w]), "rejected_gold": float(gold[l]),
                      "chosen_text": tok.decode(responses[w], skip_special_tokens=True),
                      "rejected_text": tok.decode(responses[l], skip_special_tokens=True)})
        if gold[a] != gold[b]:
            agree.append(gold[w] > gold[l])
    with atomic_dir(task.pairs_dir) as out:
        atomic_write_jsonl(out / "pairs.jsonl", pairs)
        atomic_write_json(out / "gold.json", gold_spec)
    kept_lengths = [response_length(x["chosen_ids"], eos) for x in pairs] + [response_length(x["rejected_ids"], eos) for x in pairs]
    return {"pairs": len(pairs), "gold_reward": gold_spec["reward"], "sft_length_mode": gold_spec["mode"],
            "sft_mean_length": float(lengths.mean()), "sft_eos_fraction": float(np.mean(completed)),
            "pair_mean_length": float(np.mean(kept_lengths)), "label_agrees_with_gold": float(np.mean(agree)),
            "chosen_gold_mean": float(np.mean([x["chosen_gold"] for x in pairs])),
            "rejected_gold_mean": float(np.mean([x["rejected_gold"] for x in pairs]))}


if __name__ == "__main__":
    run_stage(task_from_argv().stage("pairs"), main)
