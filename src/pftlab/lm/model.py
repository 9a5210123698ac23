"""The policy network, token sequences, and the log-probabilities every objective is built on.

Sequences are right-padded `prompt + response` rows; `response_mask` marks response tokens (including
EOS) so the losses see only what the policy generated.
"""
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from pftlab.core.distributed import place


def model_device(model) -> torch.device:
    """Where a model's weights are (the adapter-disabled LoRA reference: its base model's)."""
    return next(getattr(model, "peft_model", model).parameters()).device


def new_policy(tokenizer, n_layer: int, n_embd: int, n_head: int, n_positions: int) -> GPT2LMHeadModel:
    """A GPT-2-style LM from scratch. Dropout is off: on-policy ratios and KL estimates need a
    deterministic forward pass (as in TRL and OpenRLHF). That `n_embd` divides by `n_head` every stage checks
    before its work (core/params.py, CROSS_SECTION_RULES)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,  # GPT2Config defaults to 50256: wrong for a small vocab
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return place(GPT2LMHeadModel(config))


def load_tokenizer(path):
    return AutoTokenizer.from_pretrained(path)


def load_policy(path):
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generation_config.pad_token_id = model.config.pad_token_id
    return place(model)


@dataclass
class Sequences:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L), 1 on prompt and response tokens
    response_mask: torch.Tensor  # (B, L), 1 on response tokens

    def __len__(self):
        return self.input_ids.shape[0]

    def select(self, index) -> "Sequences":
        return Sequences(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, where) -> "Sequences":
        """On a device, or on a model's device; no copy where they already are."""
        where = where if isinstance(where, (str, torch.device)) else model_device(where)
        return Sequences(*(getattr(self, f.name).to(where) for f in fields(self)))


TRUNCATION_WARNING = 0.2  # a stage warns when it cuts more than this share of its prompts or of its responses


class Truncation:
    """What a stage cut to model.max_prompt_tokens / max_response_tokens, for its metrics and a warning."""

    def __init__(self):
        self.seen = {"prompts": 0, "responses": 0}
        self.cut = {"prompts": 0, "responses": 0}

    def count(self, kind: str, was_cut: bool):
        self.seen[kind] += 1
        self.cut[kind] += bool(was_cut)

    def metrics(self) -> dict:
        out = {}
        for kind, n in self.seen.items():
            if n:
                out |= {f"{kind}_truncated": self.cut[kind], f"{kind}_truncated_fraction": self.cut[kind] / n}
        return out

    def warn(self, stage: str):
        import warnings

        for kind, n in self.seen.items():
            if n and self.cut[kind] / n > TRUNCATION_WARNING:
                key = "max_prompt_tokens" if kind == "prompts" else "max_response_tokens"
                warnings.warn(f"stage '{stage}': {self.cut[kind]} of {n} {kind} ({self.cut[kind] / n:.0%}) were cut to "
                              f"model.{key}", stacklevel=2)


def encode_prompt(tokenizer, prompt: str, max_tokens: int, truncation: Truncation = None) -> list:
    """Keep the end of long prompts: the last turn is what the reply answers. A prompt rendered by a chat
    template that starts with BOS gets no second one."""
    bos = tokenizer.bos_token
    ids = tokenizer(prompt, add_special_tokens=not (bos and bos != tokenizer.eos_token and prompt.startswith(bos)))["input_ids"]
    if truncation is not None:
        truncation.count("prompts", len(ids) > max_tokens)
    return ids[-max_tokens:]


def encode_response(tokenizer, response: str, max_tokens: int, truncation: Truncation = None) -> list:
    """A reply ends with EOS unless it had to be cut (then the model must not learn to stop there). No
    special tokens inside: a tokenizer that adds BOS would put one between prompt and reply."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if truncation is not None:
        truncation.count("responses", len(ids) >= max_tokens)
    return ids[:max_tokens] if len(ids) >= max_tokens else ids + [tokenizer.eos_token_id]


def pack(prompts: list, responses: list, pad_id: int) -> Sequences:
    """Right-padded prompt+response rows; causal attention with right padding needs no position fix.
    Filled row by row on the CPU (cheap there, a kernel launch per row on a GPU); `.to(model)` moves them."""
    rows = [p + r for p, r in zip(prompts, responses)]
    length = max(len(r) for r in rows)
    cpu = torch.device("cpu")
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=cpu)
    attention = torch.zeros((len(rows), length), dtype=torch.long, device=cpu)
    response = torch.zeros((len(rows), length), dtype=torch.long, device=cpu)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long, device=cpu)
        attention[i, : len(p) + len(r)] = 1
        response[i, len(p) : len(p) + len(r)] = 1
    return Sequences(input_ids, attention, response)


def pack_pairs(pairs: list, pad_id: int) -> tuple:
    """(chosen, rejected) Sequences of preference pairs (dicts with prompt_ids, chosen_ids, rejected_ids):
    row i of each is pair i's prompt followed by its chosen / rejected response."""
    prompts = [r["prompt_ids"] for r in pairs]
    return pack(prompts, [r["chosen_ids"] for r in pairs], pad_id), pack(prompts, [r["rejected_ids"] for r in pairs], pad_id)


def token_logprobs(model, seqs: Sequences, with_entropy: bool = False):
    """log pi(token_t | tokens_<t) for t = 1..L-1, zero outside the response; shape (B, L-1).

    Logits at position t-1 predict token t: the shift that is easy to get wrong by one.
    With `with_entropy`, also the per-token entropy of pi at those positions (masked the same way).
    The sequences go to the model's device (no copy where they are already); so does the result.
    """
    seqs = seqs.to(model)
    logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask).logits
    return _gather_logprobs(logits, seqs, with_entropy)


def _gather_logprobs(logits, seqs: Sequences, with_entropy: bool):
    # The softmax over the vocabulary is taken at response positions only: prompt and padding
    # positions are most of a batch and their log-probs are masked out anyway.
    where = seqs.response_mask[:, 1:].bool()
    picked = F.log_softmax(logits[:, :-1][where].float(), dim=-1)
    logp = torch.zeros(where.shape, dtype=picked.dtype, device=picked.device)
    logp[where] = picked.gather(-1, seqs.input_ids[:, 1:][where].unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp
    entropy = torch.zeros_like(logp)
    entropy[where] = -(picked.exp() * picked).sum(-1)
    return logp, entropy


class ValueHead(nn.Module):
    """PPO's critic: a linear read-out of the policy's last hidden state (shared backbone, as in TRL's
    value-head models), zero-initialised so the first advantages are the rewards themselves."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden):
        return self.linear(hidden.to(self.linear.weight.dtype)).float().squeeze(-1)  # bf16 under DeepSpeed


def token_logprobs_and_values(model, value_head: ValueHead, seqs: Sequences):
    """One forward pass: (token log-probs, entropies, values), each (B, L-1) and masked like token_logprobs;
    values[t] is read at the state that predicts token t+1."""
    seqs = seqs.to(model)
    out = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, output_hidden_states=True)
    logp, entropy = _gather_logprobs(out.logits, seqs, with_entropy=True)
    values = value_head(out.hidden_states[-1][:, :-1]) * seqs.response_mask[:, 1:].float()
    return logp, entropy, values


def target_mask(seqs: Sequences) -> torch.Tensor:
    """The response mask aligned with token_logprobs' (B, L-1) output."""
    return seqs.response_mask[:, 1:].float()


def sequence_logprobs(model, seqs: Sequences) -> torch.Tensor:
    return token_logprobs(model, seqs).sum(-1)


@torch.no_grad()
def batched(fn, seqs: Sequences, batch_size: int = 64, dim: int = 0) -> torch.Tensor:
    """Apply a no-grad per-sequence function in chunks and concatenate along the batch dimension `dim`."""
    out = [fn(seqs.select(slice(i, i + batch_size))) for i in range(0, len(seqs), batch_size)]
    if not out:
        return torch.zeros(0, device=seqs.input_ids.device)
    width = max(o.shape[-1] for o in out) if out[0].dim() > 1 else None
    if width is not None:  # token-level outputs of chunks have different lengths: right-pad with 0
        out = [F.pad(o, (0, width - o.shape[-1])) for o in out]
    return torch.cat(out, dim=dim)


def concat_sequences(parts: list, pad_id: int) -> Sequences:
    """Stack right-padded Sequences of different lengths, padding each to the longest."""
    length = max(s.input_ids.shape[1] for s in parts)
    pad = lambda x, value: F.pad(x, (0, length - x.shape[1]), value=value)
    return Sequences(torch.cat([pad(s.input_ids, pad_id) for s in parts]),
                     torch.cat([pad(s.attention_mask, 0) for s in parts]),
                     torch.cat([pad(s.response_mask, 0) for s in parts]))
