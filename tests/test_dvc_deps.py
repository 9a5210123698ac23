"""DVC deps that cannot drift: dvc.yaml is generated from core/pipeline.py, and every stage declares each project
module its script imports, transitively.

The closure of a stage is computed with `ast` (pftlab.core.deps) from the script in its cmd. The
dvc.yaml test is the one that guards edits; the dvc.lock test checks what DVC actually recorded, and
passes once the lock has been refreshed (`dvc commit` / `dvc repro`) after the deps changed.
Fix a failure with: python -m pftlab.core.deps --write
"""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pftlab.core import deps, pipeline

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `python -m pftlab.core.deps --write` (then `dvc commit` for dvc.lock)"


def _yaml_stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def dvc_stages():
    """The pipeline as DVC expands it (foreach/matrix items, ${...} resolved), by DVC's own reader."""
    pytest.importorskip("dvc")
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return list(repo.index.stages)


def _lock_entries(dvc_stages):
    """dvc.lock's entries for the stages the pipeline has now (DVC keeps entries of removed ones)."""
    current = {s.addressing for s in dvc_stages}
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    return {name: entry for name, entry in lock.items() if name in current}


def _spec(stage: dict) -> dict:
    return stage["do"] if "do" in stage else stage  # foreach keeps cmd and deps under do; matrix does not


def _cmd(cmd) -> str:
    return " && ".join(cmd) if isinstance(cmd, list) else str(cmd)


def _missing_report(missing: dict[str, list[str]], where: str) -> str:
    lines = [f"{where}: stages do not declare project modules their scripts import ({FIX}):"]
    lines += [f"  {stage}: {', '.join(mods)}" for stage, mods in sorted(missing.items())]
    return "\n".join(lines)


def test_every_imported_module_is_a_dep_in_dvc_yaml():
    missing, checked = {}, 0
    for name, stage in _yaml_stages().items():
        spec = _spec(stage)
        scripts, closure = deps.stage_closure(_cmd(spec["cmd"]), ROOT)
        if not scripts:
            continue
        checked += 1
        for script in scripts:  # guard against a closure that silently comes back empty
            if "pftlab" in (ROOT / script).read_text():
                assert "src/pftlab/__init__.py" in closure, f"{name}: closure of {script} misses the package"
        declared = set(spec.get("deps") or [])
        lost = [m for m in scripts + closure if m not in declared]
        if lost:
            missing[name] = lost
    assert checked, "no stage in dvc.yaml runs a python script: the check checked nothing"
    assert not missing, _missing_report(missing, "dvc.yaml")


def test_every_imported_module_is_a_dep_in_dvc_lock(dvc_stages):
    """dvc.lock holds the expanded stages (policy@dpo, ...) with the deps DVC hashed for each run."""
    missing, checked = {}, 0
    for name, entry in _lock_entries(dvc_stages).items():
        scripts, closure = deps.stage_closure(_cmd(entry["cmd"]), ROOT)
        if not scripts:
            continue
        checked += 1
        recorded = {d["path"] for d in entry.get("deps") or []}
        lost = [m for m in scripts + closure if m not in recorded]
        if lost:
            missing[name] = lost
    assert checked, "no stage in dvc.lock runs a python script: the check checked nothing"
    assert not missing, _missing_report(missing, "dvc.lock")


def test_closure_follows_transitive_function_level_and_from_package_imports(tmp_path):
    files = {
        "stages/run.py": "import os\nimport torch\nfrom mypkg import sub, VALUE\nimport mypkg.a as a\nimport helper\n",
        "stages/helper.py": "X = 1\n",  # a sibling of the script: sys.path[0] when run as `python stages/run.py`
        "src/mypkg/__init__.py": "VALUE = 1\n",
        "src/mypkg/sub.py": "def f():\n    from mypkg.deep.leaf import thing\n    return thing\n",
        "src/mypkg/deep/__init__.py": "from . import rel\n",
        "src/mypkg/deep/leaf.py": "thing = 1\n",
        "src/mypkg/deep/rel.py": "try:\n    import numpy\nexcept ImportError:\n    pass\n",
        "src/mypkg/a.py": "from .b import x\n",
        "src/mypkg/b.py": "x = 1\n",
        "src/mypkg/unused.py": "import mypkg.sub\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert deps.import_closure("stages/run.py", tmp_path) == [
        "src/mypkg/__init__.py", "src/mypkg/a.py", "src/mypkg/b.py", "src/mypkg/deep/__init__.py",
        "src/mypkg/deep/leaf.py", "src/mypkg/deep/rel.py", "src/mypkg/sub.py", "stages/helper.py"]
    # `from package import name` where name is not a module adds only the package
    (tmp_path / "stages/two.py").write_text("from mypkg import VALUE\n")
    assert deps.import_closure(tmp_path / "stages/two.py", tmp_path) == ["src/mypkg/__init__.py"]


def test_dvc_yaml_is_the_pipeline_generated():
    """dvc.yaml is written whole from core/pipeline.py and the stages' import closures: an edit by hand, a new
    import or a changed declaration without `--write` fails here."""
    assert (ROOT / "dvc.yaml").read_text() == deps.generate(ROOT), f"dvc.yaml is stale: {FIX}"


def test_check_fails_on_a_drifted_file_and_write_mends_it(tmp_path, capsys):
    drifted = tmp_path / "dvc.yaml"
    drifted.write_text((ROOT / "dvc.yaml").read_text().replace("      - src/pftlab/lm/readers.py\n", "", 1))
    assert deps.main(["--check", "--root", str(ROOT), "--file", str(drifted)]) == 1
    assert "\n+      - src/pftlab/lm/readers.py\n" in capsys.readouterr().out  # the diff shows what is missing
    assert deps.main(["--write", "--root", str(ROOT), "--file", str(drifted)]) == 0
    assert drifted.read_text() == (ROOT / "dvc.yaml").read_text()


def test_generated_text_reads_back_as_the_declaration():
    """Comments and layout aside, dvc.yaml is exactly the pipeline's data (render checks it on every write too)."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert list(doc["stages"]) == list(pipeline.KINDS)
    assert doc == yaml.safe_load(deps.render(deps.pipeline_doc(ROOT)))
    assert doc["stages"]["policy"]["do"]["params"][-1] == "algos.${item}"
    assert doc["stages"]["bandit"]["outs"][0] == {"metrics/curves/bandit_aligned_offline.csv": {"cache": False}}


def test_the_names_stages_write_under_are_what_they_declare():
    """stages/bandit.py writes a BANDIT_CURVE per reward of params bandit.rewards, declared per BANDIT_REWARDS;
    report.md links its figures as figures/<name>.png."""
    assert tuple(yaml.safe_load((ROOT / "params.yaml").read_text())["bandit"]["rewards"]) == pipeline.BANDIT_REWARDS
    assert Path(pipeline.FIGURES) == Path(pipeline.REPORT).parent / "figures"


def test_no_dep_points_at_a_missing_file(dvc_stages):
    """After a move, a dep left at the old path is a file that no stage makes and that does not exist.
    Code deps must exist; any other dep must exist or be an output of some stage (or lie inside one)."""
    from dvc.dependency.param import ParamsDependency

    stages = dvc_stages
    outs = {o.def_path.rstrip("/") for s in stages for o in s.outs}

    def made(path: str) -> bool:
        return any(path == o or path.startswith(o + "/") or o.startswith(path + "/") for o in outs)

    stale = []
    for s in stages:
        for d in s.deps:
            if isinstance(d, ParamsDependency):
                continue
            path = d.def_path.rstrip("/")
            if (ROOT / path).exists() or (not path.endswith(".py") and made(path)):
                continue
            stale.append(f"{s.addressing}: {path}")
    assert stages and not stale, "deps that point at nothing:\n  " + "\n  ".join(stale)


def test_code_deps_in_dvc_lock_exist(dvc_stages):
    stale = [f"{name}: {d['path']}" for name, entry in _lock_entries(dvc_stages).items()
             for d in entry.get("deps") or [] if d["path"].endswith(".py") and not (ROOT / d["path"]).exists()]
    assert not stale, f"dvc.lock records code deps that no longer exist ({FIX}):\n  " + "\n  ".join(stale[:40])


def test_what_a_module_change_reruns_is_narrow_by_design():
    """`python -m pftlab.core.deps --fanout`: editing a dataset layout reruns prepare only (and what its output
    changes), not every stage that checks params; the didactic problems' code reaches no LLM stage."""
    reach = deps.fanout(ROOT)
    assert reach["src/pftlab/lm/layouts.py"] == ["prepare"]
    assert reach["src/pftlab/lm/readers.py"] == reach["src/pftlab/lm/data.py"] == ["prepare"]
    llm = {"prepare", "tokenizer", "sft", "sft_samples", "pairs", "reward_model", "policy", "evaluate_sft", "evaluate"}
    for module in ("didactic/bandit.py", "didactic/coverage.py", "didactic/config.py"):
        assert not llm & set(reach[f"src/pftlab/{module}"]), module


def test_the_code_every_stage_runs_imports_no_torch():
    """A module in every stage's closure loads with every stage: torch there would cost the light stages
    (prepare, report, ...) its import, and a change to torch code there would rerun all of them."""
    everywhere = [m for m, kinds in deps.fanout(ROOT).items() if len(kinds) == len(pipeline.KINDS)]
    names = [m.removeprefix("src/").removesuffix(".py").removesuffix("/__init__").replace("/", ".") for m in everywhere]
    assert "pftlab.core.stage" in names and "pftlab.core.checkpoint" in names, names
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names) + \
        "assert 'torch' not in sys.modules, [n for n in sys.modules if n.split('.')[0] == 'torch'][:3]"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_report_reads_the_taxonomy_without_loading_torch():
    """The report judges claims by the algorithms' taxonomy (algorithms/taxonomy.py), not their objectives:
    a change to an objective must not rerun it, and it must not pay torch's import."""
    report = deps.code_deps(pipeline.KINDS["report"], ROOT)
    assert "src/pftlab/algorithms/taxonomy.py" in report and "src/pftlab/algorithms/table.py" not in report
    code = ("import sys\nimport pftlab.reporting.report\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
