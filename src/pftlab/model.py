"""The policy network, token sequences, and the log-probabilities every objective is built on.

Sequences are right-padded `prompt + response` rows; `response_mask` marks response tokens (including
EOS) so the losses see only what the policy generated.
"""
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel


def new_policy(tokenizer, n_layer: int, n_embd: int, n_head: int, n_positions: int) -> GPT2LMHeadModel:
    """A GPT-2-style LM from scratch. Dropout is off: on-policy ratios and KL estimates need a
    deterministic forward pass (as in TRL and OpenRLHF)."""
    if n_embd % n_head:
        from .errors import ParamError

        raise ParamError(f"params.yaml: 'model.n_embd' ({n_embd}) must be divisible by 'model.n_head' ({n_head})")
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
    return GPT2LMHeadModel(config)


def load_tokenizer(path):
    return AutoTokenizer.from_pretrained(path)


def load_policy(path):
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model


@dataclass
class Sequences:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L), 1 on prompt and response tokens
    response_mask: torch.Tensor  # (B, L), 1 on response tokens

    def __len__(self):
        return self.input_ids.shape[0]

    def select(self, index) -> "Sequences":
        return Sequences(*(getattr(self, f.name)[index] for f in fields(self)))


def encode_prompt(tokenizer, prompt: str, max_tokens: int) -> list:
    """Keep the end of long prompts: the last turn is what the reply answers."""
    return tokenizer(prompt)["input_ids"][-max_tokens:]


def encode_response(tokenizer, response: str, max_tokens: int) -> list:
    """A reply ends with EOS unless it had to be cut (then the model must not learn to stop there)."""
    ids = tokenizer(response)["input_ids"]
    return ids[:max_tokens] if len(ids) >= max_tokens else ids + [tokenizer.eos_token_id]


def pack(prompts: list, responses: list, pad_id: int) -> Sequences:
    """Right-padded prompt+response rows; causal attention with right padding needs no position fix."""
    rows = [p + r for p, r in zip(prompts, responses)]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    response = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention[i, : len(p) + len(r)] = 1
        response[i, len(p) : len(p) + len(r)] = 1
    return Sequences(input_ids, attention, response)


def token_logprobs(model, seqs: Sequences, with_entropy: bool = False):
    """log pi(token_t | tokens_<t) for t = 1..L-1, zero outside the response; shape (B, L-1).

    Logits at position t-1 predict token t: the shift that is easy to get wrong by one.
    With `with_entropy`, also the per-token entropy of pi at those positions (masked the same way).
    """
    logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask).logits[:, :-1].float()
    targets = seqs.input_ids[:, 1:]
    mask = seqs.response_mask[:, 1:].to(logits.dtype)
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask
    if not with_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1) * mask
    return logp, entropy


def target_mask(seqs: Sequences) -> torch.Tensor:
    """The response mask aligned with token_logprobs' (B, L-1) output."""
    return seqs.response_mask[:, 1:].float()


def sequence_logprobs(model, seqs: Sequences) -> torch.Tensor:
    return token_logprobs(model, seqs).sum(-1)


@torch.no_grad()
def batched(fn, seqs: Sequences, batch_size: int = 64) -> torch.Tensor:
    """Apply a no-grad per-sequence function in chunks and concatenate along the batch."""
    out = [fn(seqs.select(slice(i, i + batch_size))) for i in range(0, len(seqs), batch_size)]
    if not out:
        return torch.zeros(0)
    width = max(o.shape[-1] for o in out) if out[0].dim() > 1 else None
    if width is not None:  # token-level outputs of chunks have different lengths: right-pad with 0
        out = [F.pad(o, (0, width - o.shape[-1])) for o in out]
    return torch.cat(out)
