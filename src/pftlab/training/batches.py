"""What a collection hands the policy loop: preference pairs, fresh samples (k per prompt), or both (HyPO).

Each batch holds the reference (and, for samples, behaviour) log-probs computed once at collection, and
selects rows for a minibatch with `select`."""
from dataclasses import dataclass, field

import torch

from pftlab.lm.model import Sequences, concat_sequences


@dataclass
class PairBatch:
    chosen: Sequences
    rejected: Sequences
    ref_logp_chosen: torch.Tensor
    ref_logp_rejected: torch.Tensor
    reward_chosen: torch.Tensor = None  # proxy RM scores, for the offline methods that rank by the RM
    reward_rejected: torch.Tensor = None

    def __len__(self):
        return len(self.chosen)

    def select(self, index):
        pick = lambda x: None if x is None else x[index]
        return PairBatch(self.chosen.select(index), self.rejected.select(index), self.ref_logp_chosen[index],
                         self.ref_logp_rejected[index], pick(self.reward_chosen), pick(self.reward_rejected))


@dataclass
class SampleBatch:
    seqs: Sequences  # prompt-major: the k samples of prompt i are rows i*k .. i*k+k-1
    rewards: torch.Tensor  # proxy reward per sample
    old_token_logp: torch.Tensor  # log pi_behaviour per response token at collection, (B, L-1)
    ref_token_logp: torch.Tensor  # log pi_ref per response token, (B, L-1)
    k: int
    extra: dict = field(default_factory=dict)  # per-row tensors an algorithm's `prepare` adds (PPO: values, GAE)

    @property
    def old_logp(self):
        return self.old_token_logp.sum(-1)

    @property
    def ref_logp(self):
        return self.ref_token_logp.sum(-1)

    def __len__(self):
        return len(self.seqs) // self.k

    def to(self, where) -> "SampleBatch":
        return SampleBatch(self.seqs.to(where), self.rewards.to(where), self.old_token_logp.to(where),
                           self.ref_token_logp.to(where), self.k, {name: v.to(where) for name, v in self.extra.items()})

    def select(self, prompt_index):
        rows = (prompt_index.unsqueeze(-1) * self.k + torch.arange(self.k, device=prompt_index.device)).reshape(-1)
        return SampleBatch(self.seqs.select(rows), self.rewards[rows], self.old_token_logp[rows],
                           self.ref_token_logp[rows], self.k, {name: v[rows] for name, v in self.extra.items()})


@dataclass
class HybridBatch:
    pairs: PairBatch  # pair i ...
    samples: SampleBatch  # ... and the unlabelled fresh samples of its prompt

    def __len__(self):
        return len(self.pairs)

    def select(self, index):
        return HybridBatch(self.pairs.select(index), self.samples.select(index))


def concat_sample_batches(parts: list, pad_id: int, offline: list = None) -> SampleBatch:
    """The parts' rows in order, padded to the longest. The per-row extras that every part has are kept; with
    `offline` (a flag per part), only `extra["offline"]`, which marks the rows of offline parts."""
    width = max(p.seqs.input_ids.shape[1] for p in parts) - 1
    pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))
    if offline is None:
        extra = {name: torch.cat([p.extra[name] for p in parts]) for name in parts[0].extra
                 if all(name in p.extra for p in parts)}
    else:
        extra = {"offline": torch.cat([torch.full((len(p.seqs),), float(off), device=p.rewards.device)
                                       for p, off in zip(parts, offline)])}
    return SampleBatch(concat_sequences([p.seqs for p in parts], pad_id), torch.cat([p.rewards for p in parts]),
                       torch.cat([pad(p.old_token_logp) for p in parts]), torch.cat([pad(p.ref_token_logp) for p in parts]),
                       parts[0].k, extra)


BATCH_TYPES = {"PairBatch": PairBatch, "SampleBatch": SampleBatch, "HybridBatch": HybridBatch, "Sequences": Sequences}
