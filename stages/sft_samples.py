"""Stage sft_samples: two SFT samples per train prompt (data/sft_samples/samples.jsonl). Every gold
reward of the LLM task (stages pairs, pairs_variant@<gold>) labels these same responses."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
import numpy as np
from transformers.utils import logging as hf_logging

from pftlab.core.io import atomic_write_jsonl, read_jsonl
from pftlab.core.pipeline import PROMPTS_TRAIN, SFT_MODEL, SFT_SAMPLES
from pftlab.core.stage import run_stage
from pftlab.lm.gold import ends_with_eos, response_length
from pftlab.lm.model import Truncation, encode_prompt, load_policy, load_tokenizer
from pftlab.lm.sampling import sample_responses


def main(p, tracker):
    hf_logging.set_verbosity_error()
    if p.get("pairs.source") == "human":  # the data's own labelled pairs are used: nothing to sample
        atomic_write_jsonl(SFT_SAMPLES, [])
        return {"prompts": 0, "skipped": "pairs.source is human"}
    tok, policy = load_tokenizer(SFT_MODEL), load_policy(SFT_MODEL)
    eos = tok.eos_token_id
    cut = Truncation()
    prompts = [encode_prompt(tok, r["prompt"], p["model.max_prompt_tokens"], cut)
               for r in read_jsonl(PROMPTS_TRAIN)[: p["pairs.max_prompts"]]]
    cut.warn("sft_samples")
    repeated = [x for x in prompts for _ in range(2)]
    responses = sample_responses(policy, repeated, p["model.max_response_tokens"], p["generation.temperature"],
                                 p["generation.batch_size"], eos, tok.pad_token_id, desc="SFT samples")
    rows = [{"prompt_ids": x, "responses": [responses[2 * i], responses[2 * i + 1]]} for i, x in enumerate(prompts)]
    atomic_write_jsonl(SFT_SAMPLES, rows)
    lengths = [response_length(r, eos) for r in responses]
    return {"prompts": len(prompts), "mean_length": float(np.mean(lengths)),
            "eos_fraction": float(np.mean([ends_with_eos(r, eos) for r in responses])), **cut.metrics()}


if __name__ == "__main__":
    run_stage("sft_samples", main)
