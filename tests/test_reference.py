"""LoRA reference mode: the disabled-adapter reference is the base model; training the adapter moves the
policy and not the reference; the saved (merged) policy is the trained one."""
import torch

from pftlab.lm.model import load_policy, pack, sequence_logprobs
from pftlab.lm.reference import AdapterDisabledReference, policy_and_reference, save_policy, weight_copies
from pftlab.lm.tokenizer import train_tokenizer
from tests.test_model import PAD, tiny_model


def test_lora_reference_is_the_base_model_and_training_moves_only_the_policy(tmp_path):
    base = tiny_model(seed=7)
    base.save_pretrained(tmp_path / "base")
    policy, ref = policy_and_reference(tmp_path / "base", "lora", lora_rank=4, lora_alpha=8)
    assert isinstance(ref, AdapterDisabledReference)  # no second copy of the weights
    adapter = sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n)
    base_size = sum(p.numel() for p in base.parameters())
    assert weight_copies(policy, ref) == (base_size + adapter) / base_size
    seqs = pack([[3, 4], [5]], [[6, 7, 1], [8, 1]], PAD)
    base_logp = sequence_logprobs(base, seqs)
    assert torch.allclose(sequence_logprobs(ref, seqs), base_logp, atol=1e-6)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # only the adapter trains
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    for _ in range(5):
        loss = -sequence_logprobs(policy, seqs).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = sequence_logprobs(policy, seqs).detach()
    assert (trained > base_logp + 1e-3).all()  # the adapter changed the policy...
    assert torch.allclose(sequence_logprobs(ref, seqs), base_logp, atol=1e-6)  # ...and not the reference
    save_policy(policy, train_tokenizer(["a b c"] * 10, 300), tmp_path / "saved")
    assert torch.allclose(sequence_logprobs(load_policy(tmp_path / "saved"), seqs), trained, atol=1e-5)


def test_frozen_copy_reference_has_no_gradient(tmp_path):
    tiny_model(seed=3).save_pretrained(tmp_path / "base")
    policy, ref = policy_and_reference(tmp_path / "base", "frozen_copy")
    assert all(p.requires_grad for p in policy.parameters()) and not any(p.requires_grad for p in ref.parameters())
    assert policy is not ref and not ref.training
    assert weight_copies(policy, ref) == 2.0
