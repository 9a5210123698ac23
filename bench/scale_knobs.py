"""What the speed and memory knobs cost, as ratios measured in one run on this machine.

    python bench/scale_knobs.py                 # the default CPU model (params.yaml `model`)
    python bench/scale_knobs.py --model models/sft --repeats 5   # any saved Hugging Face causal LM

For each knob, the same work is timed both ways (best of `--repeats`, after one warm-up) and the
ratio is reported, so the numbers mean something on any machine:
- sampling with transformers' KV cache vs recomputing the whole prefix per token (what `generate` saves);
- one DPO update (policy + reference log-probs, backward, the policy loop's `Updater`: clipping, AdamW)
  with gradient checkpointing vs without (time, and the activations autograd keeps from a forward
  pass), and with the minibatch split into micro-batches vs in one piece;
- the LoRA reference (adapter switched off, one copy of the weights) vs a frozen second copy: the time
  of the reference pass and the weights held in memory.
Results go to stdout and `--out` (default `bench/results/scale_knobs.json`). Nothing here is a test:
timings vary with load; the ratios are what to compare across machines and versions.
"""
import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

from pftlab.algorithms.losses import dpo_loss
from pftlab.core.io import atomic_write_json
from pftlab.lm.model import Sequences, load_policy, pack, sequence_logprobs
from pftlab.lm.reference import policy_and_reference, weight_copies
from pftlab.training.config import OptimizerKnobs
from pftlab.training.optimization import Updater

ROOT = Path(__file__).resolve().parents[1]


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def default_model() -> GPT2LMHeadModel:
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    m = cfg["model"]
    config = GPT2Config(vocab_size=cfg["tokenizer"]["vocab_size"], n_positions=m["max_prompt_tokens"] + m["max_response_tokens"],
                        n_embd=m["n_embd"], n_layer=m["n_layer"], n_head=m["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    return GPT2LMHeadModel(config)


def sampling(model, prompts, new_tokens: int, repeats: int) -> dict:
    """Same prompts, same number of new tokens (EOS disabled), with and without the KV cache."""
    ids = torch.tensor(prompts)

    def run(use_cache):
        torch.manual_seed(0)
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=use_cache,
                       pad_token_id=model.config.pad_token_id, eos_token_id=None)

    model.eval()
    with torch.no_grad():
        cached, uncached = best_time(lambda: run(True), repeats), best_time(lambda: run(False), repeats)
    tokens = ids.shape[0] * new_tokens
    return {"kv_cache_tokens_per_second": tokens / cached, "no_cache_tokens_per_second": tokens / uncached,
            "kv_cache_speedup": uncached / cached}


def dpo_step_fn(policy, ref, chosen: Sequences, rejected: Sequences, micro_batches: int):
    """One DPO optimizer step through the policy loop's `Updater` (AdamW, clipping, accumulation by rows)."""
    parameters = [p for p in policy.parameters() if p.requires_grad]
    knobs = OptimizerKnobs(lr=1e-6, warmup_steps=0, max_grad_norm=1.0, lr_schedule="cosine")
    updater = Updater(policy, parameters, knobs, total_steps=10**6, accumulation=micro_batches)
    rows = len(chosen)

    def step():
        updater.zero_grad()
        parts = torch.arange(rows).chunk(micro_batches)
        for i, part in enumerate(parts):
            c, r = chosen.select(part), rejected.select(part)
            with torch.no_grad():
                ref_w, ref_l = sequence_logprobs(ref, c), sequence_logprobs(ref, r)
            loss, _ = dpo_loss(sequence_logprobs(policy, c), sequence_logprobs(policy, r), ref_w, ref_l, beta=0.1)
            updater.backward(loss, len(part) / rows, last=i == len(parts) - 1)
        updater.step()

    return step


def training(path, prompts, responses, repeats: int) -> dict:
    chosen = pack(prompts, responses, pad_id=1)
    rejected = pack(prompts, [r[: len(r) // 2] for r in responses], pad_id=1)
    out = {}

    def timed(micro_batches=1, checkpointing=False):
        policy, ref = policy_and_reference(path, "frozen_copy", gradient_checkpointing=checkpointing)
        return best_time(dpo_step_fn(policy.train(), ref, chosen, rejected, micro_batches), repeats)

    def saved_activations(checkpointing):
        """Elements autograd keeps from one policy forward for the backward pass (activation memory)."""
        policy, _ = policy_and_reference(path, "frozen_copy", gradient_checkpointing=checkpointing)
        kept = [0]

        def keep(t):
            kept[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            sequence_logprobs(policy.train(), chosen)
        return kept[0]

    out["gradient_checkpointing_saved_activations_ratio"] = saved_activations(True) / saved_activations(False)
    plain = timed()
    out["dpo_step_seconds"] = plain
    out["gradient_checkpointing_time_ratio"] = timed(checkpointing=True) / plain
    out["four_micro_batches_time_ratio"] = timed(micro_batches=4) / plain

    policy, frozen = policy_and_reference(path, "frozen_copy")
    lora, adapter_off = policy_and_reference(path, "lora", lora_rank=8, lora_alpha=16)
    with torch.no_grad():
        t_frozen = best_time(lambda: sequence_logprobs(frozen, chosen), repeats)
        t_off = best_time(lambda: sequence_logprobs(adapter_off, chosen), repeats)
    out["lora_reference_time_ratio"] = t_off / t_frozen  # adapter switched off vs a plain second copy
    out["weight_copies_frozen_reference"] = weight_copies(policy, frozen)
    out["weight_copies_lora_reference"] = weight_copies(lora, adapter_off)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved Hugging Face causal LM (default: the CPU suite's model, untrained)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale_knobs.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model is None:  # save the default-sized model once so every variant loads the same weights
        with tempfile.TemporaryDirectory() as tmp:
            default_model().save_pretrained(tmp)
            return run(tmp, args)
    return run(args.model, args)


def run(path, args):
    model = load_policy(path)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(2, vocab, (args.rows, args.prompt_tokens), generator=g).tolist()
    responses = torch.randint(2, vocab, (args.rows, args.new_tokens), generator=g).tolist()

    results = {"model": str(args.model or "default CPU model (params.yaml)"),
               "parameters": sum(p.numel() for p in model.parameters()), "rows": args.rows,
               "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
               "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}
    results |= sampling(model, prompts, args.new_tokens, args.repeats)
    results |= training(path, prompts, responses, args.repeats)
    for key, value in results.items():
        print(f"{key:48s} {value:.3f}" if isinstance(value, float) else f"{key:48s} {value}")
    atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
