"""End to end: the hh-smollm preset at toy size (a real pretrained policy on the human-labelled pairs) through
the real `dvc repro` in a temporary copy of the repository. Its own file, so that `pytest -n 2 --dist loadfile`
runs it beside the smoke pipeline."""
import json

import pytest
import yaml

from tests.test_pipeline import ROOT, copy_repo, dvc, load

pytestmark = pytest.mark.slow


# --- hh-smollm: a real pretrained policy on the human-labelled pairs, reduced -------------------------
@pytest.fixture(scope="module")
def hh_run(tmp_path_factory):
    """params/presets/hh-smollm.yaml at toy size: SmolLM2-135M (GGUF) through every LLM stage for HyPO."""
    tree = yaml.safe_load((ROOT / "params" / "presets" / "hh-smollm.yaml").read_text())
    tree["model"] |= {"max_prompt_tokens": 24, "max_response_tokens": 12}
    tree["sft"] |= {"max_examples": 4, "batch_size": 4}
    tree["pairs"]["max_prompts"] = 16
    tree["reward_model"]["batch_size"] = 4
    tree["algorithms"] = ["hypo"]  # DPO on the human pairs plus the on-policy KL term: sampling, LoRA, both
    tree["policy"] |= {"iterations": 2, "batch_size": 4, "minibatch_size": 4, "monitor_every": 1}
    tree["eval"] |= {"num_prompts": 4, "likelihood_pairs": 4, "judge": {"id": "models/sft"}}  # a local model as LLM judge
    params = tmp_path_factory.mktemp("hh_params") / "params.yaml"
    params.write_text(yaml.safe_dump(tree, sort_keys=False))
    repo = copy_repo(tmp_path_factory.mktemp("hh"), params)
    dvc(repo, "repro", "evaluate@hypo")
    return repo


def test_hh_smollm_runs_a_pretrained_policy_on_human_pairs(hh_run):
    """SmolLM2-135M read from GGUF, saved in Hugging Face format with its own padding token, SFT, a reward
    model on its backbone trained on the human labels, HyPO as a LoRA adapter merged at the end."""
    from safetensors import safe_open

    repo = hh_run
    sft = load(repo, "sft.json")
    assert 134e6 < sft["parameters"] < 136e6  # SmolLM2-135M, read from GGUF and saved in Hugging Face format
    tokenizer = json.loads((repo / "models" / "sft" / "tokenizer_config.json").read_text())
    assert tokenizer["pad_token"] == "<|pad|>" != tokenizer["eos_token"]
    pairs = load(repo, "pairs.json")
    assert pairs["gold_reward"] == "reward_model" and 12 <= pairs["pairs"] <= 16
    first = json.loads((repo / "data" / "pairs" / "pairs.jsonl").read_text().splitlines()[0])
    labelled = json.loads((repo / "data" / "prepared" / "pairs_train.jsonl").read_text().splitlines()[0])
    assert (first["chosen_text"], first["rejected_text"]) == (labelled["chosen"], labelled["rejected"])  # the human labels
    # SmolLM2-Instruct has a chat template: every hh turn rendered by it, the reply bare (EOS is <|im_end|>)
    assert load(repo, "prepare.json")["template"] == "chat template" and load(repo, "prepare.json")["multi_turn_prompts"] > 0
    assert labelled["prompt"].startswith("<|im_start|>") and labelled["prompt"].endswith("<|im_start|>assistant\n")
    assert "\n\nHuman:" not in labelled["prompt"] and not labelled["chosen"].startswith(" ")
    assert load(repo, "sft_samples.json")["prompts"] == 0  # nothing sampled for human pairs
    policy = load(repo, "policy/hypo.json")
    assert policy["steps"] == 2 and load(repo, "eval/sft.json")["kl_k1"] == 0
    assert 1.0 < policy["weight_copies_in_memory"] < 1.05  # one copy of SmolLM2 plus the LoRA adapter (~2%)
    ev = load(repo, "eval/hypo.json")
    assert ev["kl_k3"] > 0  # the LoRA adapter moved the policy away from the reference
    assert ev["gold_reward"] == pytest.approx(ev["proxy_reward"])  # no gold for human data: the RM judges
    assert ev["judge_comparisons"] == 4 and 0 <= ev["judge_win_rate_vs_sft"] <= 1  # and the LLM judge
    with safe_open(repo / "models" / "policy" / "hypo" / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora_" in k]  # the adapter was merged before saving
