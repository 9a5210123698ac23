"""Batched sampling from a policy with transformers `generate` (KV cache), pure ancestral sampling."""
import torch
from tqdm.auto import tqdm

from pftlab.core.distributed import world_size
from pftlab.lm.model import model_device


def left_pad(prompts: list, pad_id: int):
    """Left-padded prompts for `generate`, filled on the CPU (the caller moves them to the model)."""
    length = max(len(p) for p in prompts)
    cpu = torch.device("cpu")
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long, device=cpu)
    mask = torch.zeros((len(prompts), length), dtype=torch.long, device=cpu)
    for i, p in enumerate(prompts):
        ids[i, length - len(p) :] = torch.tensor(p, dtype=torch.long, device=cpu)
        mask[i, length - len(p) :] = 1
    return ids, mask


def cut_at_eos(tokens: list, eos_id: int) -> list:
    """Response tokens up to and including the first EOS (everything after it is padding)."""
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens


@torch.no_grad()
def sample_responses(model, prompts: list, max_new_tokens: int, temperature: float, batch_size: int,
                     eos_id: int, pad_id: int, desc: str = "sampling") -> list:
    """One response (token ids, EOS included if reached) per prompt, in order.

    top_k=0 and top_p=1 make this sampling from pi itself: KL estimates and on-policy gradients assume it.
    Randomness comes from torch's global RNG, seeded by the caller.
    """
    was_training = model.training
    model.eval()
    # ZeRO-3 gathers the weights over all processes at every forward pass: a process whose samples have all
    # ended keeps stepping until every process is done (the callers give each process as many prompts)
    synced = world_size() > 1 and any(hasattr(p, "ds_id") for p in model.parameters())
    responses = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, disable=None):
        chunk = prompts[start : start + batch_size]
        ids, mask = (x.to(model_device(model)) for x in left_pad(chunk, pad_id))
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            use_cache=True,
            synced_gpus=synced,
        )
        for row in out[:, ids.shape[1] :].tolist():
            responses.append(cut_at_eos(row, eos_id))
    model.train(was_training)
    return responses
