"""End to end: the real `dvc repro` of the smoke preset in a temporary copy of the repository."""
import csv
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pftlab.core import tracking
from pftlab.core.params import load_params
from pftlab.reporting import seeds
from pftlab.reporting.report import build_report

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ["dpo", "rloo", "hypo", "ppo"]  # smoke.yaml; trained as LoRA adapters (policy.reference: lora)
VARIANTS = {"rewards": ["mode_length"], "algorithms": ["dpo"]}  # smoke.yaml: the task relabelled
TRAINING_SEEDS = {"seeds": [1, 2]}  # smoke.yaml: every policy again with seeds 1 and 2
pytestmark = pytest.mark.slow


def copy_repo(dest: Path, params: Path = ROOT / "params" / "smoke.yaml") -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (name.startswith("metrics/") and not name.endswith("/README.md")) or not (ROOT / name).is_file():
            continue  # the committed default-run metrics must not stand in for the smoke run's (folder notes stay)
        if name == "dvc.lock":  # the default run's: it locks nothing here, and DVC rereads and rewrites the whole
            continue            # file after every stage (6,600 lines: ~3.6 s a stage, measured; the copy's own lock is small)
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    shutil.copy2(params, dest / "params.yaml")
    git = ["git", "-c", "user.email=test@pftlab", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "smoke"], cwd=dest, check=True)
    return dest


def env(tracking: bool):
    bin_dir = str(Path(sys.executable).parent)
    out = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "PFTLAB_MLFLOW": "1" if tracking else "0"}
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def dvc(repo, *args, tracking=False):
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env(tracking),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"dvc {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("smoke"))
    dvc(repo, "repro", tracking=True)
    return repo


def load(repo, name):
    return json.loads((repo / "metrics" / name).read_text())


def test_every_stage_wrote_sane_outputs(smoke_run):
    repo = smoke_run
    prepare = load(repo, "prepare.json")
    assert prepare["rows_valid"] + prepare["rows_skipped"] == 2312 and 0 < prepare["rows_skipped"] < 24
    assert prepare["prompts_train"] > 1000 and prepare["prompts_eval"] > 100
    sft = load(repo, "sft.json")
    assert sft["eval_loss"] < sft["eval_loss_initial"]  # SFT learned something
    assert (repo / "models" / "sft" / "model.safetensors").stat().st_size > 10_000
    pairs = load(repo, "pairs.json")
    assert pairs["pairs"] == 128 and pairs["chosen_gold_mean"] >= pairs["rejected_gold_mean"]
    rows = [json.loads(line) for line in (repo / "data" / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 128 and all(r["prompt_ids"] and r["chosen_ids"] and r["rejected_ids"] for r in rows)
    rm = load(repo, "reward_model.json")
    assert 0 <= rm["held_out_label_accuracy"] <= 1 and -1 <= rm["held_out_gold_correlation"] <= 1
    base = load(repo, "eval/sft.json")
    assert base["kl_k1"] == 0 and base["kl_k3"] == 0  # the SFT policy is its own reference
    for name in ALGORITHMS:
        policy = load(repo, f"policy/{name}.json")
        assert policy["steps"] == 3 * 2 * 2  # iterations x steps_per_batch x minibatches
        ev = load(repo, f"eval/{name}.json")
        assert ev["kl_k3"] > 0 and ev["kl_k1"] != 0  # training moved the policy
        assert 0 <= ev["win_rate_vs_sft"] <= 1 and ev["samples"] == 16 * 2
        assert (repo / "models" / "policy" / name / "model.safetensors").exists()
        curve = (repo / "metrics" / "curves" / f"policy_{name}.csv").read_text().splitlines()
        assert curve[0].startswith("step,") and len(curve) == 1 + policy["steps"]
    report = (repo / "metrics" / "report.md").read_text()
    for name in ["sft"] + ALGORITHMS:
        assert f"| {name} |" in report
    assert "| policy@rloo |" in report  # stage times
    assert "online_kl_k1" in (repo / "metrics" / "curves" / "policy_hypo.csv").read_text().splitlines()[0]
    ppo = list(csv.DictReader((repo / "metrics" / "curves" / "policy_ppo.csv").open()))
    assert {"clip_fraction", "value_loss", "kl_coef", "entropy", "grad_norm", "kl_k3"} <= set(ppo[0])
    assert len({row["kl_coef"] for row in ppo}) == 3  # the adaptive controller moved it after each collection
    claims = load(repo, "claims.json")
    assert sorted(claims, key=int) == [str(i) for i in range(1, 9)]
    assert {c["verdict"] for c in claims.values()} <= {"reproduced", "not reproduced", "inconclusive"}
    assert any(x["setting"].startswith("didactic") for x in claims["1"]["checks"])
    assert any(x["setting"].startswith("coverage") for x in claims["6"]["checks"])
    assert any(x["setting"] == "synthetic LLM task (min_length)" for x in claims["8"]["checks"])  # hypo and dpo ran
    assert "## The papers' claims" in report and "| 8. HyPO" in report
    # the mode_length variant labels the same SFT samples, and trains its own reward model and policies
    variant = load(repo, "variants/mode_length/pairs.json")
    assert variant["gold_reward"] == "mode_length" and variant["pairs"] == pairs["pairs"]
    relabelled = [json.loads(line) for line in (repo / "data/variants/mode_length/pairs/pairs.jsonl").read_text().splitlines()]
    same_samples = lambda r: (tuple(r["prompt_ids"]), frozenset([tuple(r["chosen_ids"]), tuple(r["rejected_ids"])]))
    assert [same_samples(r) for r in relabelled] == [same_samples(r) for r in rows]
    mode = json.loads((repo / "data/variants/mode_length/pairs/gold.json").read_text())["mode"]
    length = {tuple(r[side + "_ids"]): -r[side + "_gold"] for r in rows for side in ("chosen", "rejected")}  # min_length: -|y|
    assert all(r[side + "_gold"] == -abs(length[tuple(r[side + "_ids"])] - mode)
               for r in relabelled for side in ("chosen", "rejected"))
    for name in VARIANTS["algorithms"]:
        assert (repo / "models/variants/mode_length/policy" / name / "model.safetensors").exists()
        assert load(repo, f"variants/mode_length/eval/{name}.json")["kl_k3"] > 0
    assert "under the `mode_length` gold reward" in report and "| policy_variant@mode_length-dpo |" in report
    # training seeds: dpo again with seeds 1 and 2 (same SFT, pairs, RM), trained and evaluated by one stage
    # seeds@dpo: each its own model and evaluation; and claims over seeds
    for s in TRAINING_SEEDS["seeds"]:
        seed_eval = load(repo, f"training_seeds/dpo/s{s}/eval.json")
        assert (repo / f"models/training_seeds/dpo/s{s}/model.safetensors").exists()
        assert seed_eval["kl_k1"] != load(repo, "eval/dpo.json")["kl_k1"]  # the seed changed the run
        assert ((repo / f"models/training_seeds/dpo/s{s}/model.safetensors").read_bytes()
                != (repo / "models/policy/dpo/model.safetensors").read_bytes())
        assert load(repo, f"training_seeds/dpo/s{s}/policy.json")["steps"] == load(repo, "policy/dpo.json")["steps"]
        assert (repo / f"metrics/curves/training_seeds/dpo/policy_s{s}.csv").exists()
    assert "### Across training seeds" in report and "| min_length | dpo |" in report
    assert "| seeds@dpo: policy_seed@dpo-2 |" in report  # stage times: the seeds' runs of one stage
    assert any(c["over"] == "training seeds (0, 1, 2)" for c in claims["8"]["checks"])  # DPO vs HyPO over seeds
    bandit = load(repo, "didactic/bandit.json")
    assert len(bandit["runs"]["misaligned/ppo/on_policy"]["final_reward"]) == 2  # one value per seed
    reuse_1, reuse_4 = (bandit["runs"][f"misaligned/ppo/reuse_{t}"] for t in (1, 4))
    assert [4 * s for s in reuse_4["samples"]] == reuse_1["samples"]  # equal gradient steps, a quarter of the fresh samples
    assert reuse_4["curve"][-1]["samples"] == reuse_4["samples"][0] and "2" in claims and claims["2"]["checks"]
    assert "### Offline DPO, step by step" in report and "| seed 1 |" in report
    for fig in ("learning_curves.png", "losses.png", "reward_vs_kl.png", "sft_loss.png", "bandit.png", "bandit_reuse.png", "coverage.png",
                "dpo_diagnosis.png", "coverage_claim6.png", "token_bandit.png"):
        assert (repo / "metrics" / "figures" / fig).read_bytes()[:4] == b"\x89PNG"


def test_mlflow_has_one_run_per_stage_grouped_by_pipeline_run(smoke_run):
    with sqlite3.connect(smoke_run / "mlflow.db") as db:
        tags = db.execute("select r.name, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                          "where t.key = 'pipeline_run'").fetchall()
        steps = db.execute("select count(*) from metrics m join runs r on m.run_uuid = r.run_uuid "
                           "where r.name = 'policy@dpo' and m.key = 'loss'").fetchone()[0]
    names = {n for n, _ in tags}
    assert {"prepare", "tokenizer", "sft", "pairs", "reward_model", "evaluate@sft", "bandit", "coverage", "report"} <= names
    assert {f"policy@{a}" for a in ALGORITHMS} | {f"evaluate@{a}" for a in ALGORITHMS} <= names
    assert len({v for _, v in tags}) == 1
    assert steps == 12


def fingerprint(repo):
    """Every metric except wall-clock times, and the bytes of every model file."""
    out = {}
    for path in sorted((repo / "metrics").rglob("*.json")):
        data = json.loads(path.read_text())
        out[str(path.relative_to(repo))] = {k: v for k, v in data.items() if k not in ("seconds", "startup_seconds")}
    for path in sorted((repo / "metrics" / "curves").rglob("*.csv")):
        lines = [line.split(",") for line in path.read_text().splitlines()]
        keep = [i for i, c in enumerate(lines[0]) if "second" not in c]
        out[str(path.relative_to(repo))] = [[row[i] for i in keep if i < len(row)] for row in lines]
    for path in sorted((repo / "models").rglob("*.safetensors")):
        out[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_same_params_and_seed_give_identical_results(smoke_run, tmp_path):
    """The training path again in a fresh copy (every model stage up to the policies; evaluation, variants,
    didactic stages and report are left out for time): every metric and model file is identical; with
    another seed, they are not."""
    again = copy_repo(tmp_path)
    rerun = ["dpo", "ppo"]  # for time: offline pairs, and sampling with a value head
    dvc(again, "repro", *[f"policy@{a}" for a in rerun], tracking=False)
    first, second = fingerprint(smoke_run), fingerprint(again)
    assert set(second) <= set(first) and len(second) > 10
    assert sum(k.endswith(".safetensors") for k in second) >= 2 + len(rerun)  # sft, RM, the policies rerun
    assert {k: first[k] for k in second} == second
    # ...and another seed gives other numbers: the SFT stage again with the next seed (and the stages before it)
    params = yaml.safe_load((again / "params.yaml").read_text())
    reseed = {"seed": params["seed"] + 1, "training_seeds": {**params["training_seeds"], "seeds": [params["seed"] + 2]}}
    (again / "params.yaml").write_text(yaml.safe_dump({**params, **reseed}))  # training seeds must not repeat it
    dvc(again, "repro", "sft", tracking=False)
    reseeded = fingerprint(again)
    assert reseeded["models/sft/model.safetensors"] != first["models/sft/model.safetensors"]
    assert reseeded["metrics/sft.json"] != first["metrics/sft.json"]


def test_a_stage_killed_mid_run_resumes_from_its_checkpoint_with_the_same_result(smoke_run, tmp_path):
    """SIGKILL to `dvc repro` and the PPO stage it runs, right after its first checkpoint (smoke: every 4 of 12
    steps); the next `dvc repro` resumes there and ends with the metrics and model bytes of the full run."""
    repo, stage = Path(shutil.copytree(smoke_run, tmp_path / "killed", symlinks=True)), "policy@ppo"
    before = {k: v for k, v in fingerprint(smoke_run).items() if "ppo" in k}
    marker = repo / "checkpoints" / stage / "meta.json"
    run = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", "-f", "-s", stage], cwd=repo,
                           env=env(False), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while not marker.exists() and run.poll() is None:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "the stage finished before its first checkpoint"
    assert json.loads(marker.read_text())["step"] == 4 and not (repo / "models" / "policy" / "ppo").exists()
    # -f again: this stage has a dvc.lock entry from the full run, which plain `dvc repro` would just check
    # out of the cache; a stage killed in its first run has none, and `dvc repro` runs it (and resumes).
    out = dvc(repo, "repro", "-f", "-s", stage)
    assert f"resuming stage '{stage}' from its checkpoint at step 4" in out
    assert {k: v for k, v in fingerprint(repo).items() if "ppo" in k} == before and len(before) >= 4
    assert not (repo / "checkpoints" / stage).exists()  # removed once the outputs were written
    assert "up to date" in dvc(repo, "status", stage)  # (the report reads the stage's wall time: it would rerun)


def test_deepspeed_zero2_with_accumulation_gives_the_plain_loops_losses(smoke_run, tmp_path):
    """The DPO stage again, through `dvc repro` with policy.deepspeed: configs/deepspeed/zero2.json (one CPU
    process, gloo) and 2 micro-batches per step: the losses and weights of the plain single-step run."""
    from safetensors.torch import load_file

    repo = Path(shutil.copytree(smoke_run, tmp_path / "ds", symlinks=True))
    tree = yaml.safe_load((repo / "params.yaml").read_text())
    tree["policy"] |= {"deepspeed": "configs/deepspeed/zero2.json", "micro_batch_size": 2}
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    dvc(repo, "repro", "-s", "policy@dpo")
    ran = load(repo, "policy/dpo.json")
    assert (ran["zero_stage"], ran["accumulation_steps"]) == (2, 2)  # read back from DeepSpeed's engine
    curve = lambda r: list(csv.DictReader((r / "metrics" / "curves" / "policy_dpo.csv").open()))
    plain, ds = curve(smoke_run), curve(repo)
    assert len(plain) == len(ds) == 12
    for a, b in zip(plain, ds):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), abs=1e-5)
        assert float(b["grad_norm"]) == pytest.approx(float(a["grad_norm"]), rel=1e-4)
    weights = [load_file(r / "models" / "policy" / "dpo" / "model.safetensors") for r in (smoke_run, repo)]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) < 1e-5


def test_two_processes_under_torchrun_or_accelerate_train_the_single_process_policy(smoke_run, tmp_path):
    """`launch: torchrun --standalone --nproc_per_node 2` and DeepSpeed ZeRO-2 on CPU (gloo): each process
    trains on half of every minibatch, DeepSpeed averages the gradients, the logged numbers are averaged over
    the processes, rank 0 writes. DPO's losses and weights: the plain run's. (Sampling, here the monitor's, is
    split over the processes under other seeds: tests/test_two_processes.py checks on-policy steps exactly.)"""
    from safetensors.torch import load_file

    repo = Path(shutil.copytree(smoke_run, tmp_path / "ranks", symlinks=True))
    tree = yaml.safe_load((repo / "params.yaml").read_text())
    tree["launch"] = "torchrun --standalone --nproc_per_node 2"
    tree["policy"] |= {"deepspeed": "configs/deepspeed/zero2.json"}
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    dvc(repo, "repro", "-s", "policy@dpo")
    curve = lambda r: list(csv.DictReader((r / "metrics" / "curves" / "policy_dpo.csv").open()))
    plain, ranks = curve(smoke_run), curve(repo)
    assert len(plain) == len(ranks) == 12
    for a, b in zip(plain, ranks):
        for key in ("loss", "grad_norm"):  # (the monitor's proxy reward: samples split over the processes)
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5, abs=1e-5), key
        assert bool(a["proxy_reward"]) == bool(b["proxy_reward"])  # monitored at the same iterations
    weights = [load_file(r / "models" / "policy" / "dpo" / "model.safetensors") for r in (smoke_run, repo)]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) < 1e-6
    # the same under accelerate's launcher (--multi_gpu: without it, on a machine with no GPU, it starts one process)
    tree["launch"] = "accelerate launch --multi_gpu --num_processes 2 --main_process_port 0"
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    out = dvc(repo, "repro", "-s", "policy@dpo")
    assert "accelerate launch" in out
    weights = [load_file(r / "models" / "policy" / "dpo" / "model.safetensors") for r in (smoke_run, repo)]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) < 1e-6
    assert load(repo, "policy/dpo.json")["final_loss"] == pytest.approx(load(smoke_run, "policy/dpo.json")["final_loss"], abs=1e-6)


def test_a_training_seed_run_alone_equals_the_same_seed_after_another_in_one_process(smoke_run, tmp_path):
    """seeds@dpo trains seeds 1 and 2 in one process, then evaluates them: nothing of seed 1's runs leaks into seed
    2's. Seed 2 alone, in a fresh process, gives the same model bytes, curve and metrics; and a seed list that
    repeats a seed is refused before any work, with one line."""
    repo = Path(shutil.copytree(smoke_run, tmp_path / "seed2", symlinks=True))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["training_seeds"]["seeds"] = [2]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    dvc(repo, "repro", "-s", "seeds@dpo")
    alone, after = fingerprint(repo), fingerprint(smoke_run)
    seed2 = [k for k in after if "training_seeds/dpo/s2" in k or k.endswith("policy_s2.csv") and "/dpo/" in k]
    assert len(seed2) >= 4 and {k: alone[k] for k in seed2} == {k: after[k] for k in seed2}
    assert not (repo / "models/training_seeds/dpo/s1").exists()  # only the listed seeds
    params["training_seeds"]["seeds"] = [2, 2]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, "stages/seeds.py", "dpo"], cwd=repo, env=env(False), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "error in stage 'seeds@dpo'" in out.stderr and "lists 2 more than once" in out.stderr


def test_seed_runs_from_dvc_exp_show_enter_the_report(smoke_run, tmp_path):
    """`python -m pftlab.reporting.seeds` reads `dvc exp show --json`: here the committed smoke run stands for another seed."""
    repo = smoke_run
    git = ["git", "-c", "user.email=test@pftlab", "-c", "user.name=test"]
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "smoke run"], cwd=repo, check=True)
    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    current = yaml.safe_load((repo / "params.yaml").read_text())
    assert seeds.collect(shown, current) == []  # the run's own seed is the workspace's
    runs = seeds.collect(shown, current | {"seed": 7})
    assert [r["seed"] for r in runs] == [0]
    assert runs[0]["tasks"]["min_length"]["dpo"]["gold_reward"] == load(repo, "eval/dpo.json")["gold_reward"]
    assert set(runs[0]["tasks"]["mode_length"]) == {"sft", *VARIANTS["algorithms"]}
    assert seeds.collect(shown, current | {"seed": 7, "policy": {**current["policy"], "lr": 0.5}}) == []
    # the report over two training seeds: this run's metrics and a second seed one token better everywhere
    shutil.copytree(repo / "metrics", tmp_path / "metrics")
    for held_out in ("data/eval", "data/variants", "data/training_seeds"):  # per-prompt samples: the checks over prompts
        shutil.copytree(repo / held_out, tmp_path / held_out)
    (tmp_path / "data/pairs").mkdir()
    shutil.copy(repo / "data/pairs/gold.json", tmp_path / "data/pairs/gold.json")  # judges the SFT reference draw
    other = {reward: {n: v | {"gold_reward": v["gold_reward"] + 1} for n, v in policies.items()}
             for reward, policies in runs[0]["tasks"].items()}
    seeds.write_seed_runs([{"seed": 7, "experiment": "fake", "tasks": other}], tmp_path / "metrics" / "seeds")
    build_report(ALGORITHMS, VARIANTS, seed=0, root=tmp_path)
    claims = json.loads((tmp_path / "metrics" / "claims.json").read_text())
    llm = [c for c in claims["8"]["checks"] if c["setting"].startswith("synthetic LLM")]
    over_seeds = [c for c in llm if c["over"].startswith("training seeds")]
    assert over_seeds and all(c["over"] == "training seeds (0, 7)" and c["n"] == 2 for c in over_seeds)
    assert any(c["over"].startswith("held-out prompts") for c in llm)  # every policy, over prompts, as well
    report = (tmp_path / "metrics" / "report.md").read_text()
    assert "### Across training seeds" in report and "| mode_length | dpo |" in report
    # a sweep that ran under other params or data (the default task's, beside a run on your own) is not shown
    sweep_row = {"experiment": "e1", "setting": {"lr": 0.001}, "validation_gold_reward": 1.0, "validation_interval": [0, 2],
                 "validation_kl_k1": 0.1, "gold_reward": 1.0}
    (tmp_path / "metrics" / "sweep").mkdir(exist_ok=True)
    (tmp_path / "metrics" / "sweep" / "summary.json").write_text(json.dumps(
        {"rule": "r", "context": "theirs", "algorithms": {"dpo": {"rows": [sweep_row], "selected": {"lr": 0.001}}}}))
    build_report(ALGORITHMS, VARIANTS, seed=0, root=tmp_path, params_context="ours")
    report = (tmp_path / "metrics" / "report.md").read_text()
    assert "### Hyperparameter sweep" not in report and "ran under other params or data than this run" in report


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rest(base, path, body=None):
    import urllib.request

    request = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _new_page(browser):
    """A fresh browser profile (nothing remembered), as big as the README's screenshots."""
    page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
    page.set_default_timeout(60_000)  # the UI's first load is slow on busy cores
    return page


def _title(page, text):
    """The page's title (an h2 that MLflow does not expose as a heading role)."""
    return page.locator("h2").filter(has_text=re.compile(f"^{re.escape(text)}$"))


def _column_header(page, column):
    """The runs table's header of a column ("Run Name", or a metric's name), with the name as the user reads it."""
    col_id = "attributes.`Run Name`" if column == "Run Name" else _col_id(column)
    header = page.locator(f'[role=columnheader][col-id="{col_id}"]')
    header.wait_for()
    assert column in header.inner_text(), header.inner_text()
    return header


def _close_the_assistant(page):
    """MLflow's assistant opens beside every page; closed, the runs table shows all the view's columns at 1600 px."""
    page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]').click()


def _col_id(column):
    """The grid's id of a view column: a tag (the rounded results) or a metric."""
    return f"tags.`{column}`" if column in tracking.VIEW_TAGS else f"metrics.`{column}`"


def _metric_cell(page, run_name, column):
    """The table's cell of a run's metric or tag: the grid draws a run as two rows (names pinned left, values), one index."""
    index = page.get_by_role("row").filter(has=page.get_by_role("link", name=run_name, exact=True)).get_attribute("row-index")
    return page.locator(f'[role=row][row-index="{index}"] [col-id="{_col_id(column)}"]')


def _click_through_to_the_runs_table(browser, base, parents, gold, ci95, shots):
    """What a user does in a browser that never saw MLflow: home, the experiments list, `pftlab`; MLflow 3.17 opens it
    on the GenAI overview, so "Model training"; the view the pipeline saved; a parent run expanded; two dpo runs compared."""
    from playwright.sync_api import TimeoutError as NotShown
    from playwright.sync_api import expect

    page = _new_page(browser)
    page.goto(base + "/")
    page.get_by_role("link", name="Experiments", exact=True).click()
    page.get_by_role("link", name=tracking.EXPERIMENT, exact=True).click()
    _title(page, "Overview").wait_for()  # what the README warns of: not the runs table yet
    assert "workflowType=genai" in page.url and "/overview" in page.url, page.url
    got_it = page.get_by_role("button", name="Got it")  # an onboarding popover over the page, shown to a new profile
    try:
        got_it.click(timeout=10_000)
    except NotShown:
        pass
    page.get_by_role("button", name="Model training", exact=True).click()
    _column_header(page, "Run Name")
    assert "/runs?workflowType=machine_learning" in page.url, page.url
    _close_the_assistant(page)
    page.get_by_role("button", name="Views").click()
    page.get_by_text(tracking.VIEW_NAME, exact=True).click()
    for column in tracking.VIEW_TAGS + tracking.VIEW_COLUMNS:
        _column_header(page, column)
    assert f"viewStateShareKey={tracking.VIEW_KEY}" in page.url, page.url
    for name in parents:  # one parent run per pipeline run, children folded
        page.get_by_role("link", name=name, exact=True).wait_for()
    for name in gold:
        parent_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
        parent_row.locator('button[data-component-id*="runnamecellrenderer"]').click()  # the row's expand button
        cell = _metric_cell(page, f"dpo ({name})", "eval/gold_reward")
        assert float(cell.inner_text()) == pytest.approx(gold[name]), (name, cell.inner_text(), gold[name])
        rounded = _metric_cell(page, f"dpo ({name})", tracking.VIEW_TAGS[0]).inner_text()
        assert rounded == f"{gold[name]:.3g} ± {ci95[name]:.2g}", (name, rounded)  # the result as a reader wants it
    if shots:
        page.screenshot(path=shots / "mlflow_runs.png")
    for name in gold:
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"dpo ({name})", exact=True))
        row.get_by_role("checkbox").first.check()
    page.get_by_role("button", name="Compare", exact=True).click()
    _title(page, "Comparing 2 Runs from 1 Experiment").wait_for()
    page.get_by_text("Visualizations", exact=True).click()  # folded: the tables below come into view
    page.get_by_role("switch", name="Parameters - Show diff only").click()
    expect(page.get_by_role("row").filter(has_text="policy.lr")).to_have_count(0)  # equal in both: hidden
    beta = page.get_by_role("row").filter(has_text="algos.dpo.beta").inner_text().split()
    assert beta[0] == "algos.dpo.beta" and sorted(beta[1:]) == ["0.05", "0.5"], beta
    page.get_by_role("link", name="eval/gold_reward", exact=True).wait_for()
    if shots:
        page.screenshot(path=shots / "mlflow_compare.png")
    page.context.close()


def _open_the_readmes_link(browser, runs_table):
    """The README's link, in a fresh profile too: the runs table with the saved view's columns, not the GenAI overview."""
    page = _new_page(browser)
    page.goto(runs_table)
    _column_header(page, "Run Name")
    _close_the_assistant(page)
    for column in tracking.VIEW_TAGS + tracking.VIEW_COLUMNS:
        _column_header(page, column)
    assert _title(page, "Overview").count() == 0
    page.get_by_role("link", name="beta-low", exact=True).wait_for()
    page.context.close()


def test_queued_experiments_land_in_the_repositorys_store_and_compare_in_the_mlflow_ui(smoke_run, tmp_path):
    """Two `dvc exp run --queue` experiments that differ in algos.dpo.beta, run in parallel by `dvc queue start -j 2`
    in DVC's temporary workspaces: both land in the repository's mlflow.db. A real MLflow server on 127.0.0.1 then
    finds, over its REST API, one parent run per pipeline run with its children, and each experiment's `dpo` run
    with its training params, curves and held-out metrics. In headless Chromium (Playwright), a user's clicks from
    MLflow's home page reach the runs table with the gold reward of each experiment's dpo, and the compare view."""
    repo = smoke_run
    git = ["git", "-c", "user.email=test@pftlab", "-c", "user.name=test"]
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "smoke run", "--allow-empty"], cwd=repo, check=True)
    for name, beta in (("beta-low", 0.05), ("beta-high", 0.5)):
        dvc(repo, "exp", "run", "evaluate@dpo", "--queue", "-n", name, "-S", "algorithms=[dpo]", "-S", "training_seeds.seeds=[]",
            "-S", "variants.algorithms=[]", "-S", "policy.iterations=1", "-S", f"algos.dpo.beta={beta}", tracking=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "queue", "start", "-j", "2"], cwd=repo, env=env(True),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = dvc(repo, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") == 2, status + dvc(repo, "queue", "logs", "beta-low")
    # the one-table comparison: each experiment's dpo beside the knob that differs, nothing else
    shown = subprocess.run([sys.executable, "-m", "pftlab.reporting.compare"], cwd=repo, env=env(False),
                           capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()[2:] if line and not line.startswith(" ")}
    assert "algos.dpo.beta=0.05" in lines["beta-low"] and " dpo " in lines["beta-low"]
    assert "algos.dpo.beta=0.5" in lines["beta-high"] and "policy.iterations=1" in lines["beta-high"]
    assert "algorithms=" not in shown.stdout and "workspace" in lines

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{repo / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env={**env(True), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(120):
            try:
                exp = _rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=pftlab")["experiment"]
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow server did not answer within 60 s")
        assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
        runs = _rest(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})["runs"]
        tags = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        parents = {tags(r)["mlflow.runName"]: r for r in runs if tags(r)["run_kind"] == "pipeline"}
        assert {"beta-low", "beta-high"} <= set(parents) and len(parents) == 3  # the smoke run's own, in the workspace
        children = lambda run_id: [r for r in runs if tags(r).get("mlflow.parentRunId") == run_id]
        dpo = {}
        for name in ("beta-low", "beta-high"):
            under = {tags(r).get("policy_run") or tags(r)["stage"]: r for r in children(parents[name]["info"]["run_id"])}
            assert set(under) == {"dpo"}  # only what the experiment reran: dpo's stages (the target is evaluate@dpo)
            dpo[name] = under["dpo"]
            assert tags(dpo[name])["mlflow.runName"] == f"dpo ({name})"
            assert {tags(r)["mlflow.runName"] for r in children(dpo[name]["info"]["run_id"])} == {"policy@dpo", "evaluate@dpo"}
        params = {n: {p["key"]: p["value"] for p in r["data"]["params"]} for n, r in dpo.items()}
        metrics = {n: {m["key"]: m["value"] for m in r["data"]["metrics"]} for n, r in dpo.items()}
        assert (params["beta-low"]["algos.dpo.beta"], params["beta-high"]["algos.dpo.beta"]) == ("0.05", "0.5")
        assert params["beta-low"]["policy.lr"] == params["beta-high"]["policy.lr"]
        for name in dpo:
            assert {"eval/gold_reward", "eval/kl_k1", "eval/win_rate_vs_sft", "eval/response_length", "loss"} <= set(metrics[name])
            history = _rest(base, f"/api/2.0/mlflow/metrics/get-history?run_id={dpo[name]['info']['run_id']}&metric_key=loss")
            assert len(history["metrics"]) == 4  # the training curve, step by step (1 iteration here)
        held_out = lambda name: {k: v for k, v in metrics[name].items() if k.startswith("eval/")}
        assert held_out("beta-low") != held_out("beta-high")  # what the knob changed (gold reward may tie at this size)

        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            pytest.skip("no playwright here for the browser check (`make setup` installs it with the dev extras)")
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.skip("no chromium here for the browser check (.ci/run installs Debian's)")
        shots = Path(os.environ["PFTLAB_SCREENSHOTS"]).resolve() if os.environ.get("PFTLAB_SCREENSHOTS") else None
        gold = {name: metrics[name]["eval/gold_reward"] for name in dpo}
        ci95 = {name: metrics[name]["eval/gold_reward_ci95"] for name in dpo}
        with sync_playwright() as playwright:  # the system's chromium: Playwright's own browsers are never downloaded
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            try:
                _click_through_to_the_runs_table(browser, base, parents, gold, ci95, shots)
                _open_the_readmes_link(browser, base + "/" + tracking.RUNS_TABLE.format(id=exp["experiment_id"]))
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_eval_knob_reruns_only_evaluation_and_report(smoke_run):
    """Runs after the other smoke tests: it changes the smoke run's params. The seeds@ stages rerun as well:
    they train and evaluate their seeds in one process (one start-up per algorithm, not two per seed)."""
    repo = smoke_run
    assert "up to date" in dvc(repo, "status")
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("num_prompts: 16", "num_prompts: 12"))
    evaluation = {"evaluate_sft"} | {f"evaluate@{a}" for a in ALGORITHMS} | {"evaluate_variant_sft@mode_length"}
    evaluation |= {f"evaluate_variant@mode_length-{a}" for a in VARIANTS["algorithms"]}
    evaluation |= {f"seeds@{a}" for a in ALGORITHMS}  # trains and evaluates: it reads eval too
    dry = dvc(repo, "repro", "--dry")
    planned = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    assert evaluation <= planned <= evaluation | {"report"}, dry  # DVC's plan for `dvc repro`: no training stage


def test_dvc_plots_show_needs_no_network(smoke_run, tmp_path):
    """`.dvc/config` points DVC at configs/dvc_plots/template.html, vega, vega-lite and vega-embed inlined:
    the page loads nothing from a CDN, and holds the declared plots."""
    out = tmp_path / "plots"
    dvc(smoke_run, "plots", "show", "-o", str(out))
    page = (out / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "cdn.jsdelivr" not in page
    assert "vega-embed 6.18.2" in page and "vegaEmbed(" in page
    assert len(re.findall(r"<div id\s*=", page)) >= 5  # the bandit, coverage and policy curves declared in dvc.yaml
    # every plot of dvc.yaml has data under this preset (its own bandit methods, not the default's columns)
    shown = subprocess.run([str(Path(sys.executable).parent / "dvc"), "plots", "show", "--json"], cwd=smoke_run,
                           env=env(False), capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "WARNING" not in shown.stderr, shown.stderr
    declared = [next(iter(entry)) for entry in yaml.safe_load((smoke_run / "dvc.yaml").read_text())["plots"]]
    rendered = json.loads(shown.stdout)
    assert not rendered.get("errors"), rendered.get("errors")
    for name in declared:
        assert [v for plot in rendered["data"][name] for v in plot["content"]["data"]["values"]], name


def test_dvc_exp_run_sets_small_floats_lists_and_nested_keys(smoke_run):
    """Runs last. `dvc exp run -S` writes params.yaml back as YAML 1.2 (`lr: 2e-05`, which YAML 1.1 reads as
    a string); the stages read it as the number it is, and lists and nested keys arrive as set."""
    repo = smoke_run
    dvc(repo, "exp", "run", "policy@dpo", "-S", "policy.lr=2e-5", "-S", "algos.dpo.beta=0.25", "-S", "algorithms=[dpo]",
        "-S", "variants.algorithms=[dpo]", "-S", "training_seeds.seeds=[3]", "-S", "policy.iterations=1")
    written = (repo / "params.yaml").read_text()
    assert re.search(r"^  lr: 2e-0?5$", written, re.M), "DVC no longer writes the YAML 1.2 form this test is about"
    p = load_params(repo / "params.yaml")
    assert p["policy.lr"] == 2e-5 and p["algos.dpo.beta"] == 0.25 and p["algorithms"] == ["dpo"] and p["policy.iterations"] == 1
    assert p["training_seeds.seeds"] == [3]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["policy@dpo"]["params"]["params.yaml"]
    assert float(lock["policy"]["lr"]) == 2e-5 and lock["algos.dpo"]["beta"] == 0.25
    assert load(repo, "policy/dpo.json")["steps"] > 0
