"""Your own chat data through the real pipeline (smoke preset): prepare keeps every turn, the tokenized
prompts hold them, DPO trains on them, and editing the file makes DVC rerun prepare."""
import json
import random

import pytest
import yaml
from test_pipeline import copy_repo, dvc, load

pytestmark = pytest.mark.slow
WORDS = ("red blue green small large quick slow river stone cloud paper light music garden window "
         "morning evening simple careful bright quiet").split()


def chat_rows(n: int, seed: int = 0) -> list:
    """Conversational rows (TRL style, explicit prompt): 1-3 user turns, a system message in every third."""
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."
    rows = []
    for i in range(n):
        prompt = [{"role": "system", "content": "Answer briefly."}] if i % 3 == 0 else []
        for turn in range(1 + i % 3):
            prompt.append({"role": "user", "content": f"Question {i}-{turn}: {say(4)}"})
            if turn < i % 3:
                prompt.append({"role": "assistant", "content": say(3)})
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": say(2)}],
                     "rejected": [{"role": "assistant", "content": say(6)}]})
    return rows


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("chat"))
    data = repo / "data" / "raw" / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(400)))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].pop("raw")
    params["data"]["source"] = {"id": "data/raw/chat.jsonl", "layout": "conversational"}
    params["pairs"]["source"] = "human"  # the file's labels train the reward model and DPO
    params["model"]["max_prompt_tokens"] = 384  # whole prompts: every turn must reach the model
    params |= {"algorithms": ["dpo"], "training_seeds": {"seeds": []},
               "variants": {"rewards": [], "algorithms": []}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(repo, "repro", "policy@dpo")
    return repo


def test_prepare_keeps_every_turn_and_the_system_message(chat_run):
    prepare = load(chat_run, "prepare.json")
    assert prepare["layout"] == "conversational" and prepare["template"] == "plain"
    assert prepare["rows_valid"] == 400 and prepare["rows_skipped"] == 0
    assert prepare["multi_turn_prompts"] == 266 and prepare["system_prompts"] == 134  # i % 3 != 0, i % 3 == 0
    assert len(prepare["source_digest"]) == 64
    pairs = [json.loads(line) for line in (chat_run / "data/prepared/pairs_train.jsonl").read_text().splitlines()]
    with_system = [r for r in pairs if r["prompt"].startswith("\n\nSystem: Answer briefly.\n\nHuman: Question ")]
    assert with_system and all(r["prompt"].count("\n\nHuman: ") == 1 for r in with_system)  # i % 3 == 0: one turn
    three = [r["prompt"] for r in pairs if "-2: " in r["prompt"]]
    assert len(three) > 100
    for prompt in three:  # i % 3 == 2: three user turns and the two replies between them, in order
        i = prompt.split("Question ")[1].split("-")[0]
        assert prompt.index(f"Question {i}-0") < prompt.index(f"Question {i}-1") < prompt.index(f"Question {i}-2")
        assert prompt.count("\n\nAssistant: ") == 2 and prompt.endswith("\n\nAssistant:")


def test_the_tokenized_prompt_holds_every_turn(chat_run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_run / "models" / "sft")
    prepared = {r["prompt"] for r in map(json.loads, (chat_run / "data/prepared/pairs_train.jsonl").read_text().splitlines())}
    pairs = [json.loads(line) for line in (chat_run / "data/pairs/pairs.jsonl").read_text().splitlines()]
    decoded = [tok.decode(r["prompt_ids"]) for r in pairs]
    multi = [d for d in decoded if d.count("\n\nHuman: ") >= 2]
    assert multi and all(d in prepared for d in decoded)  # the whole rendered prompt, no turn lost
    assert load(chat_run, "pairs.json")["prompts_truncated"] == 0 and load(chat_run, "sft.json")["prompts_truncated"] == 0
    assert load(chat_run, "sft_samples.json")["skipped"] == "pairs.source is human"  # the file's own pairs are used
    assert load(chat_run, "policy/dpo.json")["steps"] > 0


def test_editing_your_file_makes_dvc_rerun_prepare(chat_run):
    assert "up to date" in dvc(chat_run, "status", "prepare")
    with open(chat_run / "data/raw/chat.jsonl", "a") as f:
        f.write(json.dumps(chat_rows(1, seed=9)[0]) + "\n")
    status = dvc(chat_run, "status", "prepare")
    assert "prepare:" in status and "data/raw" in status and "modified" in status


def sharegpt_parts_rows(n: int) -> list:
    """LLaMA-Factory's v1 shape: every content a list of {"type": "text", "value"} parts; every tenth row has an
    image part (skipped, counted), every seventh identical replies (no preference)."""
    parts = lambda text: [{"type": "text", "value": half} for half in (text[:3], text[3:])]  # noqa: E731
    rows = []
    for i in range(n):
        chosen = parts(f"Answer {i}.")
        rejected = chosen if i % 7 == 3 else parts(f"No answer to {i}.")
        if i % 10 == 5:
            chosen = [*chosen, {"type": "image_url", "image_url": {"url": "x.png"}}]
        rows.append({"conversations": [{"from": "human", "value": parts(f"Question number {i}?")}],
                     "chosen": {"from": "gpt", "value": chosen}, "rejected": {"from": "gpt", "value": rejected}})
    return rows


def alpaca_eval_rows(n: int) -> list:
    """alpaca_eval annotations: preference 1 / 2, 1.5 and 0 (ties), a fractional 1.25."""
    prefs = [1, 2, 1.5, 0, 1.25, 2, 1, 2]
    return [{"instruction": f"Write line {i}.", "input": "", "output_1": f"First {i}.", "output_2": f"Second {i}.",
             "preference": prefs[i % len(prefs)]} for i in range(n)]


@pytest.mark.parametrize("layout, rows, kept, malformed, no_preference", [
    ("sharegpt", sharegpt_parts_rows(200), 200 - 20 - 26, 20, 26),  # i % 10 == 5 (image) and i % 7 == 3 (identical)
    ("alpaca_farm", alpaca_eval_rows(200), 150, 0, 50),
])
def test_your_file_in_each_shape_through_the_prepare_stage(tmp_path, layout, rows, kept, malformed, no_preference):
    """The prepare stage itself, as `dvc repro` runs it, on files in the shapes people bring: ties never spend the
    bad-row budget, non-text parts are counted skips, and a file past the budget stops in one line."""
    import subprocess
    import sys

    from test_pipeline import env

    repo = copy_repo(tmp_path / "repo")
    (repo / "data/raw/mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].pop("raw")
    params["data"] |= {"source": {"id": "data/raw/mine.jsonl", "layout": layout}, "max_bad_fraction": 0.15}
    params["pairs"]["source"] = "human"
    params["variants"] = {"rewards": [], "algorithms": []}  # other gold rewards relabel SFT samples: not with human pairs
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = lambda: subprocess.run([sys.executable, "stages/prepare.py"], cwd=repo, env=env(False),  # noqa: E731
                                 capture_output=True, text=True, timeout=300)
    out = run()
    assert out.returncode == 0, out.stderr
    prepare = load(repo, "prepare.json")
    assert (prepare["rows_valid"], prepare["rows_malformed"], prepare["rows_without_preference"]) == (kept, malformed, no_preference)
    assert prepare["prompts_eval"] > 0 and prepare["prompts_train"] + prepare["prompts_eval"] == kept
    if layout == "alpaca_farm":
        assert prepare["kept_with_note"] == {"fractional preference: the side it leans to is kept as chosen": 25}
    else:  # the parts joined in order
        first = json.loads((repo / "data/prepared/sft_train.jsonl").read_text().splitlines()[0])
        assert first["response"].startswith(" Answer ") and "Question number" in first["prompt"]
        params["data"]["max_bad_fraction"] = 0.05  # 20 malformed of 200 is past it
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = run()
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
        assert "20 of 200 rows malformed" in out.stderr and "image_url content part" in out.stderr
