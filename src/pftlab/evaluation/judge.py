"""Pairwise win rate judged by a language model (`eval.judge`), beside the gold-reward or reward-model
win rate every evaluation reports.

The prompt is the pairwise one of Rafailov et al. (DPO, Anthropic-HH win rates; also used by Song et
al.): which of two responses to a query is more helpful, answered "A" or "B". The order of the two
responses is randomised per comparison (seeded), so a judge's position bias cancels in expectation.
A local Hugging Face model answers in one forward pass: the judge prefers A when its next-token
log-probability of "A" beats that of "B" after "More helpful:". An API judge is not built.
"""
import numpy as np
import torch

from pftlab.lm.hub import pretrained_model, pretrained_tokenizer
from pftlab.lm.model import model_device

PROMPT = ("For the following query to a chatbot, which response is more helpful?\n\n"
          "Query: {query}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
          'State only "A" or "B" to indicate which response is more helpful.\nMore helpful:')


def judge_win_rate(queries: list, policy_texts: list, reference_texts: list, prefers_first, seed: int) -> dict:
    """`prefers_first(prompts) -> array of bool` (the judge picks A). Returns the policy's win rate and the
    share of comparisons the judge answered A (position bias; 0.5 for an unbiased judge)."""
    policy_first = np.random.default_rng(seed).random(len(queries)) < 0.5
    prompts = [PROMPT.format(query=q.strip(), a=(p if first else r).strip(), b=(r if first else p).strip())
               for q, p, r, first in zip(queries, policy_texts, reference_texts, policy_first)]
    picks_a = np.asarray(prefers_first(prompts), dtype=bool)
    policy_wins = picks_a == policy_first
    return {"judge_win_rate_vs_sft": float(policy_wins.mean()), "judge_answered_a": float(picks_a.mean()),
            "judge_comparisons": len(prompts)}


class LLMJudge:
    """A local causal LM (`eval.judge`: {id, package?, gguf_file?}, loaded like `model.pretrained`)."""

    def __init__(self, spec: dict, batch_size: int = 8):
        self.tokenizer = pretrained_tokenizer(spec, key="eval.judge")
        self.model = pretrained_model(spec, self.tokenizer, key="eval.judge").eval()
        self.batch_size = batch_size
        # the first token of " A" and " B" (with and without a leading space the tokenizers differ)
        self.a, self.b = (self.tokenizer(" " + c, add_special_tokens=False)["input_ids"][-1] for c in "AB")

    @torch.no_grad()
    def __call__(self, prompts: list) -> np.ndarray:
        picks = []
        for i in range(0, len(prompts), self.batch_size):
            texts = [self._chat(p) for p in prompts[i : i + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
            logits = self.model(**enc.to(model_device(self.model))).logits[:, -1].float()
            picks += (logits[:, self.a] > logits[:, self.b]).tolist()
        return np.array(picks)

    def _chat(self, prompt: str) -> str:
        """An instruction-tuned judge gets its chat template, the answer prefix after the assistant turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            return prompt
        question, answer_prefix = prompt.rsplit("\n", 1)
        messages = [{"role": "user", "content": question}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer_prefix
