"""What the report reads from the stages' outputs: curves, the LLM tasks (main and variants) with their
held-out evaluations, and each policy's values over training seeds; and which evaluation wrote a metrics file."""
import csv
import json
import re
from functools import cache
from pathlib import Path

from pftlab.core.paths import Task


def evaluation_of(path: str) -> tuple[Task, str] | None:
    """(task, policy) of the evaluation whose metrics file is `path`, as core/pipeline.py declares it; None for any
    other file. For listings that name files, not stages (`dvc exp show`: metrics/variants/<gold>/eval/dpo.json)."""
    path = path.replace("\\", "/")
    for pattern in _evaluation_files():
        match = pattern.fullmatch(path)
        if match:
            found = match.groupdict()
            seed = int(found["seed"]) if found.get("seed") else None
            return Task(found.get("gold") or "", seed), found.get("policy") or "sft"
    return None


@cache
def _evaluation_files() -> list:
    """Every declared evaluation metrics path as a pattern: the placeholders of one stage's values made groups."""
    policy, gold, seed = "POLICYX", "GOLDX", 987654321  # values no declared path spells otherwise
    forms = [Task().metrics("evaluate", policy), Task(gold).metrics("evaluate", policy), Task(gold).metrics("evaluate", "sft"),
             Task(seed=seed).metrics("evaluate", policy)]
    groups = {policy: r"(?P<policy>\w+)", gold: r"(?P<gold>\w+)", str(seed): r"(?P<seed>\d+)"}
    patterns = []
    for form in forms:
        text = re.escape(form)
        for value, group in groups.items():
            text = text.replace(value, group)
        patterns.append(re.compile(text))
    return patterns


def read_curve(path) -> list:
    if not Path(path).exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def llm_tasks(algorithms: list, variants: dict, root: Path) -> dict:
    """{gold reward: (Task, policy names)} of the main task and every variant that has results."""
    main_reward = json.loads((root / Task().metrics("pairs")).read_text())["gold_reward"]
    tasks = {main_reward: (Task(), ["sft"] + list(algorithms))}
    for reward in variants.get("rewards", []):
        if reward != main_reward:
            tasks[reward] = (Task(reward), ["sft"] + list(variants["algorithms"]))
    return tasks


def load_evals(tasks: dict, root: Path) -> dict:
    """{gold reward: {policy: its metrics/[variants/<gold>/]eval/<policy>.json}}, read once."""
    return {reward: {n: json.loads((root / task.metrics("evaluate", n)).read_text()) for n in names}
            for reward, (task, names) in tasks.items()}


def seed_values(evals: dict, seed_runs: list, tasks: dict) -> tuple:
    """{reward: {policy: [this run's value, then each other seed's]}} of gold reward and KL, for the policies
    every seed run has."""
    gold, kl = {}, {}
    for reward in tasks:
        for n, own in evals.get(reward, {}).items():
            runs = [r["tasks"].get(reward, {}).get(n) for r in seed_runs]
            if seed_runs and all(runs):
                gold.setdefault(reward, {})[n] = [own["gold_reward"]] + [r["gold_reward"] for r in runs]
                kl.setdefault(reward, {})[n] = [own["kl_k1"]] + [r["kl_k1"] for r in runs]
    return gold, kl


def win_rates_per_prompt(root: Path, task: Task, name: str) -> list:
    """Each held-out prompt's win rate of policy `name` against the SFT reference draw (ties half), from the saved
    samples: the per-prompt form of the evaluation's `win_rate_vs_sft`."""
    from pftlab.core.io import read_jsonl
    from pftlab.core.pipeline import EVAL_REFERENCE
    from pftlab.lm.gold import gold_reward

    spec = json.loads((root / task.gold).read_text())
    rows, reference = read_jsonl(root / task.eval_samples(name)), read_jsonl(root / EVAL_REFERENCE)
    ref_gold = gold_reward(spec, [r["length"] for r in reference])
    per_prompt = {}
    for row, opponent in zip(rows, ref_gold):
        per_prompt.setdefault(row["prompt_index"], []).append(float(row["gold"] > opponent) + 0.5 * (row["gold"] == opponent))
    return [sum(v) / len(v) for _, v in sorted(per_prompt.items())]
