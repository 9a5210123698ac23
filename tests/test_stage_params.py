"""A stage reads only the params it declares in core/pipeline.py: DVC reruns it when those change, and only then."""
import ast
import itertools
from pathlib import Path

import pytest

from pftlab.core.errors import ParamError
from pftlab.core.params import load_params
from pftlab.core.paths import Task
from pftlab.core.pipeline import KINDS, SEED_RUNS, kind_of, metrics_of, params_of
from pftlab.reporting.results import evaluation_of

ROOT = Path(__file__).resolve().parents[1]

# Reads behind a condition that excludes the stage: pairs_variant@ labels by its own gold reward (`TASK.variant or
# p["gold.reward"]`) and never runs with human pairs (core/params.py CROSS_SECTION_RULES); a seed's policy run
# takes its seed from its name (`p["seed"] if task.seed is None`).
NEVER_READ = {("pairs_variant", "gold.reward"), ("pairs_variant", "model.max_prompt_tokens"),
              ("pairs_variant", "model.max_response_tokens"), ("policy_seed", "seed")}
# The library functions a stage hands its params to, and the kinds that run them.
LIBRARY = {"src/pftlab/training/policy_run.py": ("policy", "policy_variant", "policy_seed"),
           "src/pftlab/evaluation/run.py": ("evaluate_sft", "evaluate", "evaluate_variant_sft", "evaluate_variant",
                                            "evaluate_seed")}


def _literal_reads(path: Path, methods=("get", "config"), subscripts=True) -> set:
    """The keys a file reads from its params `p` by literal: p["a.b"], p.get("a.b"), p.config("a"), f"algos.{name}"
    (only the calls of `methods`, and subscripts if `subscripts`)."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if subscripts and isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "p":
            arg = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "p" and node.func.attr in methods:
            arg = node.args[0]
        else:
            continue
        if isinstance(arg, ast.Constant):
            keys.add(arg.value)
        elif isinstance(arg, ast.JoinedStr):  # f"algos.{name}": the kind's own algorithm
            keys.add("".join(v.value if isinstance(v, ast.Constant) else "${item}" for v in arg.values))
    return keys


def test_every_read_of_every_stage_is_declared():
    runs = {**KINDS, **SEED_RUNS}
    readers = {kind.script: [] for kind in KINDS.values()} | {path: [] for path in LIBRARY}
    for name, kind in KINDS.items():
        readers[kind.script].append(name)
    for path, names in LIBRARY.items():
        readers[path] += names
    undeclared, checked = [], 0
    for path, names in readers.items():
        keys = _literal_reads(ROOT / path)
        checked += len(keys)
        for name in names:
            declared = [k.replace("${item.algo}", "${item}") for k in runs[name].params]
            undeclared += [f"{name} ({path}): {key}" for key in sorted(keys) if (name, key) not in NEVER_READ
                           and not any(key == d or key.startswith(d + ".") for d in declared)]
    assert checked > 40, "few params reads found: the check checked little"
    assert not undeclared, "stages read params they do not declare in core/pipeline.py:\n  " + "\n  ".join(undeclared)


def test_reading_an_undeclared_key_fails_naming_it_and_the_stage():
    p = load_params(ROOT / "params.yaml").declared_only("policy@dpo", params_of("policy@dpo"))
    assert p["algos.dpo.beta"] == p["algos.dpo"]["beta"] and p.get("policy.lr") is not None
    for read in (lambda: p["eval.seed"], lambda: p.get("eval.seed"), lambda: p["model"], lambda: p.config("sft")):
        with pytest.raises(ParamError, match=r"stage 'policy@dpo' reads '(eval\.seed|model|sft)', which it does not declare"):
            read()
    with pytest.raises(ParamError, match="missing key 'policy.nope'"):  # declared but absent: the usual message
        p["policy.nope"]
    assert p.get("policy.nope", 3) == 3


def test_stage_names_follow_the_declared_grammar():
    assert KINDS["policy_variant"].stage("mode_length", "dpo") == "policy_variant@mode_length-dpo"
    assert kind_of("evaluate_seed@dpo-2") == (SEED_RUNS["evaluate_seed"], ("dpo", "2"))
    assert params_of("pairs_variant@skew_length") == ("seed", "gold.skew_quantile", "gold.skew_keep", "pairs")
    assert params_of("policy_seed@dpo-1")[-1] == "algos.dpo" and "seed" not in params_of("policy_seed@dpo-1")
    with pytest.raises(KeyError, match="no stage 'policy@a-b'"):
        params_of("policy@a-b")


def _stage_names(p, kind) -> list:
    """Every stage of `kind` that dvc.yaml expands from params `p` (foreach and matrix over params lists)."""
    if kind.foreach:
        return [(kind.stage(v), (v,)) for v in p[kind.foreach.strip("${}")]]
    if kind.matrix:
        lists = [p[values.strip("${}")] for _, values in kind.matrix]
        return [(kind.stage(*vs), vs) for vs in itertools.product(*lists)]
    return [(kind.stage(), ())]


@pytest.mark.parametrize("params_file", ["params.yaml", "params/smoke.yaml", *sorted(
    str(f.relative_to(ROOT)) for f in (ROOT / "params" / "presets").glob("*.yaml"))])
def test_every_stage_loads_its_typed_sections_through_its_own_view(params_file):
    """A stage builds its configs from the params it declares alone: a rule that consults another key (a
    replacement, a required sibling) must not read outside the stage's view. Caught late, this stops `dvc repro`
    minutes in (token_bandit once did)."""
    p = load_params(ROOT / params_file)
    loaded = set()
    for kind in KINDS.values():
        paths = [ROOT / kind.script] + [ROOT / lib for lib, names in LIBRARY.items() if kind.name in names]
        sections = set().union(*(_literal_reads(path, methods=("config",), subscripts=False) for path in paths))
        for stage, values in _stage_names(p, kind):
            view = p.declared_only(stage, params_of(stage))
            for section in sections:
                section = kind.expand(section, values)
                if p.get(section) is not None:
                    view.config(section)
                    loaded.add(section.split(".")[0])
    didactic = {"bandit", "token_bandit"} if params_file in ("params.yaml", "params/smoke.yaml") else set()
    assert {"sft", "reward_model", "policy"} | didactic <= loaded, f"only {loaded} loaded: the check checked little"


def test_an_evaluation_metrics_path_is_read_back_to_its_task_and_policy():
    """`dvc exp show` lists files, not stages: the seeds, sweep and compare readers map each back through the
    declarations (reporting/results.evaluation_of), never through a path pattern of their own."""
    for task in (Task(), Task("mode_length"), Task(seed=3)):
        for policy in ("dpo", "online_ipo", *(("sft",) if task.seed is None else ())):
            assert evaluation_of(task.metrics("evaluate", policy)) == (task, policy)
    for other in (Task().metrics("pairs"), Task().metrics("policy", "dpo"), Task(seed=3).metrics("policy", "dpo"),
                  Task("mode_length").metrics("reward_model"), metrics_of("bandit"), "metrics/eval/a/b.json"):
        assert evaluation_of(other) is None, other
    assert evaluation_of("metrics\\eval\\dpo.json") == (Task(), "dpo")  # as DVC lists it on Windows
