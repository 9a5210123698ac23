"""Stage pairs: two SFT samples per train prompt, labelled by the gold reward through Bradley-Terry
(Tajwar et al.'s synthetic LLM problem). Writes data/pairs/{pairs.jsonl, gold.json}."""
import numpy as np
from transformers.utils import logging as hf_logging

from pftlab.gold import gold_reward, label_pair, length_mode, response_length, skew_keep_mask
from pftlab.io import atomic_dir, atomic_write_json, atomic_write_jsonl, read_jsonl
from pftlab.model import encode_prompt, load_policy, load_tokenizer
from pftlab.sampling import sample_responses
from pftlab.stage import run_stage


def main(p, tracker):
    hf_logging.set_verbosity_error()
    tok, policy = load_tokenizer("models/sft"), load_policy("models/sft")
    eos = tok.eos_token_id
    prompts = [encode_prompt(tok, r["prompt"], p["model.max_prompt_tokens"])
               for r in read_jsonl("data/prepared/prompts_train.jsonl")][: p["pairs.max_prompts"]]
    repeated = [x for x in prompts for _ in range(2)]
    responses = sample_responses(policy, repeated, p["model.max_response_tokens"], p["generation.temperature"],
                                 p["generation.batch_size"], eos, tok.pad_token_id, desc="SFT samples")
    lengths = np.array([response_length(r, eos) for r in responses])
    completed = [bool(r) and r[-1] == eos for r in responses]
    gold_spec = {"reward": p["gold.reward"], "mode": length_mode(lengths.tolist(), completed)}
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
    with atomic_dir("data/pairs") as out:
        atomic_write_jsonl(out / "pairs.jsonl", pairs)
        atomic_write_json(out / "gold.json", gold_spec)
    kept_lengths = [response_length(x["chosen_ids"], eos) for x in pairs] + [response_length(x["rejected_ids"], eos) for x in pairs]
    return {"pairs": len(pairs), "gold_reward": gold_spec["reward"], "sft_length_mode": gold_spec["mode"],
            "sft_mean_length": float(lengths.mean()), "sft_eos_fraction": float(np.mean(completed)),
            "pair_mean_length": float(np.mean(kept_lengths)), "label_agrees_with_gold": float(np.mean(agree)),
            "chosen_gold_mean": float(np.mean([x["chosen_gold"] for x in pairs])),
            "rejected_gold_mean": float(np.mean([x["rejected_gold"] for x in pairs]))}


if __name__ == "__main__":
    run_stage("pairs", ["seed", "model.max_prompt_tokens", "model.max_response_tokens", "generation", "gold", "pairs"],
              main, "metrics/pairs.json")
