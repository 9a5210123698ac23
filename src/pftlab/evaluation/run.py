"""One evaluation of a policy of the LLM task on the held-out prompts, under the task's gold reward and reward
model (evaluation/evaluate.py does the measuring). Stage evaluate@<name> runs it once; stage seeds@<algorithm> runs
it for each training seed's policy, in the process that trained them. `sft` = the SFT baseline: the main task's
evaluation of it also draws the reference samples every win rate is judged against."""
import numpy as np
import torch
from transformers.utils import logging as hf_logging

from pftlab.core.errors import DataError, ParamError
from pftlab.core.io import atomic_write_jsonl, read_json, read_jsonl
from pftlab.core.paths import Task
from pftlab.core.pipeline import EVAL_REFERENCE, PROMPTS_EVAL, SFT_MODEL
from pftlab.evaluation.evaluate import evaluate_samples, pair_likelihood_change, sample_eval
from pftlab.evaluation.judge import LLMJudge, judge_win_rate
from pftlab.lm.gold import gold_reward, response_length
from pftlab.lm.model import Truncation, encode_prompt, load_policy, load_tokenizer, pack
from pftlab.lm.reward_model import load_reward_model, score_sequences

SEED_KEY = "eval.seed"  # every evaluation starts from the same random state: common random numbers


def evaluate_policy(p, name: str, task: Task) -> dict:
    """Held-out metrics of policy `name` of `task`; writes its per-sample rows (task.eval_samples)."""
    hf_logging.set_verbosity_error()
    tok = load_tokenizer(SFT_MODEL)
    cfg = {"max_new_tokens": p["model.max_response_tokens"], "temperature": p["eval.temperature"],
           "batch_size": p["generation.batch_size"]}
    n = p["eval.samples_per_prompt"]
    all_texts = [r["prompt"] for r in read_jsonl(PROMPTS_EVAL)]
    prompt_texts = all_texts[: p["eval.num_prompts"]]
    # the sweep's split: selection reads the main task's evaluations, so seeds and variants skip it
    wanted = 0 if (task.seed is not None or task.variant) else (p.get("eval.validation_prompts") or 0)
    validation_texts = all_texts[p["eval.num_prompts"]: p["eval.num_prompts"] + wanted]
    if len(validation_texts) < wanted:
        raise ParamError(f"params.yaml: eval.num_prompts + eval.validation_prompts = "
                         f"{p['eval.num_prompts'] + p['eval.validation_prompts']} but data/prepared/prompts_eval.jsonl "
                         f"holds {len(all_texts)} prompts")
    cut = Truncation()
    prompts = [encode_prompt(tok, text, p["model.max_prompt_tokens"], cut) for text in prompt_texts]
    cut.warn(task.stage("evaluate", name))
    gold_spec = read_json(task.gold)
    ref, rm = load_policy(SFT_MODEL), load_reward_model(task.reward_model)
    policy = ref if name == "sft" else load_policy(task.policy(name))
    if name == "sft" and not task.variant:  # the opponent for every win rate: an independent draw of SFT samples
        torch.manual_seed(p["eval.seed"] + 1)
        _, reference = sample_eval(ref, prompts, n, cfg, tok)
        ref_lengths = [response_length(r, tok.eos_token_id) for r in reference]
        atomic_write_jsonl(EVAL_REFERENCE, [{"response_ids": r, "length": l} for r, l in zip(reference, ref_lengths)])
    reference_rows = read_jsonl(EVAL_REFERENCE)
    if len(reference_rows) != len(prompts) * n:
        raise DataError(f"{EVAL_REFERENCE} does not match eval.num_prompts x eval.samples_per_prompt: rerun evaluate@sft")
    reference = [r["response_ids"] for r in reference_rows]
    torch.manual_seed(p["eval.seed"])  # the same seed for every policy: common random numbers
    repeated, responses = sample_eval(policy, prompts, n, cfg, tok)
    if gold_spec["reward"] == "reward_model":  # no gold: the reference samples are judged by the RM too
        reference_gold = score_sequences(rm, pack(repeated, reference, tok.pad_token_id)).cpu().numpy()
    else:
        reference_gold = gold_reward(gold_spec, np.array([r["length"] for r in reference_rows]))
    metrics, rows = evaluate_samples(policy, ref, rm, repeated, responses, n, gold_spec, reference_gold, tok)
    atomic_write_jsonl(task.eval_samples(name), rows)
    if validation_texts:  # the hyperparameter sweep's split, disjoint from the prompts above
        torch.manual_seed(p["eval.seed"] + 2)
        validation = [encode_prompt(tok, text, p["model.max_prompt_tokens"]) for text in validation_texts]
        repeated_v, responses_v = sample_eval(policy, validation, 1, cfg, tok)
        v, _ = evaluate_samples(policy, ref, rm, repeated_v, responses_v, 1, gold_spec, np.zeros(len(responses_v)), tok)
        metrics |= {"validation_prompts": len(validation), "validation_gold_reward": v["gold_reward"],
                    "validation_gold_reward_ci95": v["gold_reward_ci95"], "validation_kl_k1": v["kl_k1"]}
    likelihood = pair_likelihood_change(policy, ref, read_jsonl(task.pairs)[: p["eval.likelihood_pairs"]],
                                        tok.pad_token_id)
    if p.get("eval.judge") is not None:  # an LLM judge as well, on the texts (order randomised per pair)
        del policy, ref, rm  # one model in memory at a time: the judge may be the largest
        queries = [q for q in prompt_texts for _ in range(n)]
        reference_texts = [tok.decode(r, skip_special_tokens=True) for r in reference]
        metrics |= judge_win_rate(queries, [r["text"] for r in rows], reference_texts, LLMJudge(p["eval.judge"]),
                                  p["eval.seed"])
    return {"policy": name, "prompts": len(prompts), **metrics, **likelihood, **cut.metrics()}
