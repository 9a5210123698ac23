"""Checkpoint and resume: a run interrupted after any step and resumed equals the uninterrupted run, bit for
bit; SIGTERM saves and stops; a stale checkpoint is not resumed; non-finite steps stop (or are skipped,
counted); a write that fails (disk full, not a folder) leaves nothing behind."""
import errno
import math
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from pftlab.algorithms.hyperparameters import HYPERPARAMETERS
from pftlab.algorithms.table import ALGORITHMS
from pftlab.core import io
from pftlab.core.checkpoint import Checkpointer, Interrupted, checkpoint_dir
from pftlab.core.errors import PftlabError
from pftlab.core.stage import seed_everything
from pftlab.training.config import PolicyConfig, SftConfig
from pftlab.training.loop import train_policy
from pftlab.training.sources import make_source, sample_and_score
from pftlab.training.supervised import train_sft
from tests.test_model import EOS, PAD, tiny_model

ROOT = Path(__file__).resolve().parents[1]
HP = {name: HYPERPARAMETERS[name](**hp) for name, hp in yaml.safe_load((ROOT / "params.yaml").read_text())["algos"].items()}
CFG = {"iterations": 3, "batch_size": 4, "minibatch_size": 2, "steps_per_batch": 2, "lr": 1e-2, "warmup_steps": 1,
       "max_grad_norm": 1.0, "monitor_every": 1, "lr_schedule": "cosine"}
TIMES = ("samples_per_second", "tokens_per_second", "collect_seconds")
GENERATION = {"max_new_tokens": 5, "temperature": 1.0, "batch_size": 16}
TOKENIZER = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)


@pytest.fixture(autouse=True)
def in_tmp_and_signals_restored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints/ is relative to the stage's working directory
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in handlers.items():
        signal.signal(s, h)


class Crash(Exception):
    pass


class CrashAt:
    """A tracker that kills the run (an exception standing for SIGKILL) or signals it, at one step."""

    def __init__(self, step, how="crash"):
        self.step, self.how = step, how

    def log_metrics(self, row, step):
        if step == self.step:
            if self.how == "crash":
                raise Crash
            os.kill(os.getpid(), signal.SIGTERM)


def reward_fn(seqs):
    return (seqs.input_ids == 7).float().sum(-1)  # how often token 7 appears


def loop_config(cfg: dict) -> PolicyConfig:
    """A test's dict of loop knobs as the typed section the loop takes."""
    return PolicyConfig(**{"reference": "frozen_copy", "lora_rank": 4, "lora_alpha": 8} | cfg)


def run_policy(name, tracker=None, every=2, cfg=None):
    """A fresh process's worth of objects: seeded model, reference, sample source, optimizer."""
    seed_everything(0)
    algorithm, hp = ALGORITHMS[name], HP[name]
    policy, ref = tiny_model(seed=1).train(), tiny_model(seed=1).requires_grad_(False)
    pairs = [{"prompt_ids": [3 + i % 5], "chosen_ids": [7, 8, EOS], "rejected_ids": [9, EOS]} for i in range(6)]
    prompts = [[3 + i] for i in range(5)]
    source = make_source(algorithm, hp, pairs=pairs, prompts=prompts, generation=GENERATION, reward_fn=reward_fn,
                         tokenizer=TOKENIZER, seed=0, batch_size=(cfg or CFG)["batch_size"])
    monitor = lambda p, r: sample_and_score(p, r, prompts[:2], 1, GENERATION, reward_fn, EOS, PAD)
    checkpointer = Checkpointer(f"policy@{name}", "fingerprint", every)
    history = train_policy(algorithm, hp, loop_config(cfg or CFG), 0, policy, ref, source, monitor, tracker,
                           checkpointer=checkpointer)
    return [{k: v for k, v in row.items() if k not in TIMES} for row in history], policy


def same_numbers(a, b):
    return all(set(x) == set(y) and all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in x)
               for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("name", ["ppo", "hypo", "dpo"])  # value head + adaptive state, hybrid source, offline epochs
def test_a_run_killed_and_resumed_equals_the_uninterrupted_run(name):
    full, full_policy = run_policy(name)
    assert checkpoint_dir(f"policy@{name}").exists()  # removed by run_stage once the outputs are written
    shutil.rmtree("checkpoints")
    with pytest.raises(Crash):
        run_policy(name, tracker=CrashAt(step=7))  # step 7 done, the checkpoint of step 6 is the last
    resumed, policy = run_policy(name)
    assert same_numbers(resumed, full) and len(full) == 3 * 2 * 2
    for (n, a), b in zip(full_policy.state_dict().items(), policy.state_dict().values()):
        assert torch.equal(a, b), n


def test_sigterm_saves_a_final_checkpoint_and_the_rerun_finishes_the_same():
    full, _ = run_policy("rloo", every=0)
    shutil.rmtree("checkpoints", ignore_errors=True)
    with pytest.raises(Interrupted) as stopped:
        run_policy("rloo", tracker=CrashAt(step=4, how="sigterm"), every=0)  # no periodic checkpoints at all
    assert stopped.value.exit_code == 128 + signal.SIGTERM and "after step 5" in str(stopped.value)
    assert (checkpoint_dir("policy@rloo") / "state.pt").exists()
    resumed, _ = run_policy("rloo", every=0)
    assert same_numbers(resumed, full)


def test_a_checkpoint_of_other_params_or_code_is_not_resumed(capsys):
    checkpointer = Checkpointer("sft", "old", 1)
    checkpointer.save({"step": 3})
    assert Checkpointer("sft", "old", 1).load() == {"step": 3}
    assert Checkpointer("sft", "new", 1).load() is None  # other fingerprint: starts over...
    assert not checkpoint_dir("sft").exists()  # ...and removes the stale one
    assert "starting over" in capsys.readouterr().out


def test_a_non_finite_loss_stops_naming_the_step_and_the_last_checkpoint(monkeypatch):
    objective = ALGORITHMS["dpo"].objective
    calls = [0]

    def nan_at_step_5(policy, batch, hp, state):
        calls[0] += 1
        loss, stats = objective(policy, batch, hp, state)
        return (loss * float("nan") if calls[0] == 6 else loss), stats

    monkeypatch.setitem(ALGORITHMS, "dpo", replace(ALGORITHMS["dpo"], objective=nan_at_step_5))
    with pytest.raises(PftlabError, match=r"non-finite loss at step 5 \(iteration 1\).*checkpoints/policy@dpo at step 4"):
        run_policy("dpo")


def test_non_finite_steps_can_be_skipped_and_are_counted(monkeypatch):
    objective = ALGORITHMS["dpo"].objective
    calls = [0]

    def nan_once(policy, batch, hp, state):
        calls[0] += 1
        loss, stats = objective(policy, batch, hp, state)
        return (loss * float("nan") if calls[0] == 3 else loss), stats

    monkeypatch.setitem(ALGORITHMS, "dpo", replace(ALGORITHMS["dpo"], objective=nan_once))
    history, _ = run_policy("dpo", cfg=CFG | {"skip_nonfinite_steps": 1})
    assert [row["skipped_steps"] for row in history] == [0, 0] + [1] * 10 and math.isnan(history[2]["grad_norm"])
    calls[0] = 0
    shutil.rmtree("checkpoints")
    with pytest.raises(PftlabError, match="policy.skip_nonfinite_steps allows 0"):
        run_policy("dpo", cfg=CFG | {"skip_nonfinite_steps": 0})


def test_sft_killed_and_resumed_equals_the_uninterrupted_run():
    examples = [([3 + i % 4], [7, 8, 9][: 1 + i % 3] + [EOS]) for i in range(10)]
    cfg = SftConfig(epochs=2, batch_size=3, lr=1e-2, warmup_steps=1, lr_schedule="cosine", max_grad_norm=1.0,
                    weight_decay=0.01)

    def run(tracker=None):
        model = tiny_model(seed=2).train()
        history = train_sft(model, examples, examples[:4], cfg, PAD, seed=0, tracker=tracker, eval_every=2,
                            checkpointer=Checkpointer("sft", "f", 3))
        return history, model

    full, full_model = run()
    shutil.rmtree("checkpoints")
    with pytest.raises(Crash):
        run(CrashAt(step=4))  # the second epoch's first step; the checkpoint is at step 3 (end of epoch 1)
    resumed, model = run()
    assert resumed == full and len(full) == 8
    assert all(torch.equal(a, b) for a, b in zip(full_model.state_dict().values(), model.state_dict().values()))


def test_a_full_disk_or_a_file_in_the_way_leaves_nothing_behind(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "old.txt").write_text("previous output")
    with pytest.raises(io.OutputError, match="cannot write .*/models: No space left on device; nothing was written"):
        with io.atomic_dir(tmp_path / "models") as out:
            (out / "half.bin").write_bytes(b"12")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert [p.name for p in tmp_path.iterdir()] == ["models"] and os.listdir(tmp_path / "models") == ["old.txt"]

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(io.OutputError, match=r"metrics\.json: No space left"):
        io.atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no metrics.json, no temporary folder
    (tmp_path / "metrics").write_text("a file where a folder should be")
    with pytest.raises(io.OutputError, match="cannot write .*metrics/x.json: Not a directory"):
        io.check_writable(tmp_path / "metrics" / "x.json")
    with pytest.raises(io.OutputError, match="a file is in the way"):
        io.atomic_write_json(tmp_path / "metrics" / "x.json", {})


def test_every_torch_load_is_weights_only_and_remote_code_only_from_params():
    for path in [*(ROOT / "src" / "pftlab").rglob("*.py"), *(ROOT / "stages").glob("*.py")]:
        text = path.read_text()
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call.split(")")[0], path
        assert "trust_remote_code=True" not in text, path
