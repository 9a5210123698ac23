"""The trainable policy and its frozen reference pi_ref: a full second copy of the SFT weights, or LoRA
(peft) on the SFT weights with the reference obtained by switching the adapter off, so that no second
copy is held in memory (what makes 8B-parameter DPO and HyPO fit on one GPU)."""
import torch

from pftlab.lm.model import load_policy


class AdapterDisabledReference:
    """The base model under a peft LoRA policy, called like a model, always without gradient."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    @torch.no_grad()
    def __call__(self, **inputs):
        with self.peft_model.disable_adapter():
            return self.peft_model(**inputs)


def policy_and_reference(path, reference: str = "frozen_copy", lora_rank: int = 8, lora_alpha: float = 16.0,
                         gradient_checkpointing: bool = False):
    """(trainable policy, frozen reference) from a saved Hugging Face causal LM. Gradient checkpointing
    recomputes activations in the backward pass (memory for time; numbers unchanged)."""
    policy = load_policy(path)
    if gradient_checkpointing:  # non-reentrant: works with frozen inputs, as under LoRA
        policy.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if reference == "frozen_copy":
        ref = load_policy(path)
        ref.eval().requires_grad_(False)
        return policy, ref
    if reference != "lora":
        raise ValueError(f"unknown reference handling {reference!r}")
    from peft import LoraConfig, get_peft_model

    # "all-linear": every linear layer but the output head, whatever the architecture names them
    # (peft sets fan_in_fan_out itself for GPT-2's Conv1D layers).
    config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    policy = get_peft_model(policy, config)
    return policy, AdapterDisabledReference(policy)


def weight_copies(policy, ref) -> float:
    """Parameters held by policy and reference together, in units of the base model: about 2 for a frozen
    copy, about 1 (plus the adapter) for LoRA, whose reference is the same weights."""
    size = lambda p: getattr(p, "ds_numel", p.numel())  # a ZeRO-3 shard: its whole tensor's size
    base = sum(size(p) for n, p in policy.named_parameters() if "lora_" not in n)
    held = sum(size(p) for p in policy.parameters())
    if not isinstance(ref, AdapterDisabledReference):
        held += sum(size(p) for p in ref.parameters())
    return held / base


def save_policy(policy, tokenizer, out_dir):
    """Save a plain Hugging Face model (a LoRA adapter is merged into the weights first)."""
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    policy.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
