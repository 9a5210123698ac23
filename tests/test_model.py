"""Log-prob shift and masking against a plain per-sequence loop; sampling is pure ancestral sampling."""
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pftlab.lm.model import pack, sequence_logprobs, target_mask, token_logprobs
from pftlab.lm.sampling import cut_at_eos, left_pad, sample_responses

PAD, EOS = 0, 1


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(cfg).eval()


def plain_loop_logprob(model, prompt, response):
    """sum_t log p(response_t | prompt, response_<t), one token at a time, no padding at all."""
    total = 0.0
    for t in range(len(response)):
        ids = torch.tensor([prompt + response[:t]])
        logits = model(input_ids=ids).logits[0, -1]
        total += torch.log_softmax(logits, -1)[response[t]].item()
    return total


def test_pack_masks_and_padding():
    seqs = pack([[5, 6], [7]], [[8, EOS], [9, 10, 11]], PAD)
    assert seqs.input_ids.tolist() == [[5, 6, 8, EOS], [7, 9, 10, 11]]
    assert seqs.response_mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    seqs = pack([[5], [7, 8, 9]], [[2], [3]], PAD)
    assert seqs.input_ids.tolist() == [[5, 2, PAD, PAD], [7, 8, 9, 3]]
    assert seqs.attention_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert target_mask(seqs).tolist() == [[1, 0, 0], [0, 0, 1]]


def test_token_logprobs_match_a_plain_loop_with_padding():
    model = tiny_model()
    prompts = [[3, 4, 5], [6], [7, 8]]
    responses = [[9, 10, EOS], [11, 12, 13, 14, 15], [16]]
    seqs = pack(prompts, responses, PAD)
    got = sequence_logprobs(model, seqs)
    want = torch.tensor([plain_loop_logprob(model, p, r) for p, r in zip(prompts, responses)])
    assert torch.allclose(got, want, atol=1e-5)
    token = token_logprobs(model, seqs)
    assert (token[target_mask(seqs) == 0] == 0).all()


def test_entropy_is_masked_and_positive():
    model = tiny_model()
    seqs = pack([[3, 4]], [[5, 6]], PAD)
    _, entropy = token_logprobs(model, seqs, with_entropy=True)
    assert entropy[0, 0] == 0 and (entropy[0, 1:] > 0).all()


def test_generate_samples_from_the_policy_itself():
    """Empirical first-token frequencies of `sample_responses` match pi (no top-k/top-p truncation)."""
    model = tiny_model(seed=3)
    prompt = [3, 4]
    probs = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1], -1)
    torch.manual_seed(0)
    responses = sample_responses(model, [prompt] * 4000, max_new_tokens=1, temperature=1.0, batch_size=1000,
                                 eos_id=EOS, pad_id=PAD)
    freq = torch.bincount(torch.tensor([r[0] for r in responses]), minlength=100).float() / 4000
    assert (freq - probs).abs().max() < 0.03
    tail = probs.argsort()[:50]  # transformers' default top_k=50 would never sample these
    assert abs(freq[tail].sum() - probs[tail].sum()) < 0.03 and probs[tail].sum() > 0.2


def test_left_pad_and_cut_at_eos():
    ids, mask = left_pad([[5, 6], [7]], PAD)
    assert ids.tolist() == [[5, 6], [PAD, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    assert cut_at_eos([4, EOS, PAD, PAD], EOS) == [4, EOS]
    assert cut_at_eos([4, 5], EOS) == [4, 5]


def test_left_padded_generation_scores_match_unpadded_forward():
    """generate() on a left-padded batch must sample from the same distribution our packed forward scores."""
    model = tiny_model(seed=5)
    prompts = [[3, 4, 5, 6], [7]]
    ids, mask = left_pad(prompts, PAD)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=3,
                         eos_token_id=None, pad_token_id=PAD, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, ids.shape[1]:]
    gen_logp = torch.stack([torch.log_softmax(l, -1) for l in out.logits], 1).gather(-1, new.unsqueeze(-1)).squeeze(-1).sum(-1)
    ours = sequence_logprobs(model, pack(prompts, new.tolist(), PAD))
    assert torch.allclose(gen_logp, ours, atol=1e-4)
