"""dvc.yaml, generated whole from the pipeline's declaration (core/pipeline.py) and the code each stage runs.

A stage's code deps are computed, never written by hand: `import_closure(script, root)` follows the
imports of a stage script with `ast`, transitively, and returns every project module Python would execute
for it: the modules named by `import a.b`, `from a import b` (b a submodule or a name), `from a.b import
name`, relative imports, imports inside functions or `if`/`try` blocks, `importlib.import_module("a.b")`
with a literal name, and the `__init__.py` of every package on the way (Python runs them all; an empty one
runs nothing and is left out, so the lock file does not carry seven files that cannot change a number). A
module is "project" when it resolves to a file under the repository: the script's own directory
(sys.path[0] for `python stages/x.py`) or `src/` (where the editable install points). Everything else
(torch, the standard library) is left out. Nothing is imported but the torch-free pipeline declaration and
params registry. Each stage's deps are its script, its closure (sorted) and its data inputs, in that order.

CLI, from the repository root (or anywhere below it):

    python -m pftlab.core.deps            # each stage kind: its script and its closure
    python -m pftlab.core.deps --check    # exit 1 if dvc.yaml is not what the pipeline generates, with the diff
    python -m pftlab.core.deps --write    # write dvc.yaml from the pipeline
    python -m pftlab.core.deps --fanout   # for each module, the stage kinds a change to it reruns
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shlex
import sys
import tokenize
from pathlib import Path

import yaml

from pftlab.core.pipeline import KINDS, PLOTS, PLOTS_COMMENT, Kind

# ---------------------------------------------------------------------------------------------------
# Import closure
# ---------------------------------------------------------------------------------------------------

def _find_top(name: str, search: list[Path]) -> Path | None:
    """The directory on `search` where top-level module `name` lives, in Python's order: a regular
    package or a module on any entry first, else a namespace package (a bare directory)."""
    for d in search:
        if (d / name / "__init__.py").is_file() or (d / f"{name}.py").is_file():
            return d
    for d in search:
        if (d / name).is_dir():
            return d
    return None


def _resolve(modname: str, search: list[Path]) -> list[tuple[str, Path]]:
    """The files that importing `modname` executes, outermost package first, as (name, path):
    each package's __init__.py (if any) and the module itself. [] if not a project module; the
    chain stops where a part is not found (an attribute, or a module that does not exist)."""
    parts = modname.split(".")
    base = _find_top(parts[0], search)
    if base is None:
        return []
    found, d = [], base
    for i, part in enumerate(parts):
        name = ".".join(parts[: i + 1])
        if (d / part / "__init__.py").is_file():
            found.append((name, d / part / "__init__.py"))
            d = d / part
        elif (d / f"{part}.py").is_file():
            found.append((name, d / f"{part}.py"))
            break  # a module: nothing below it can be a module
        elif (d / part).is_dir():
            d = d / part  # namespace package: no file to run
        else:
            break
    return found


def _abs(path: str | os.PathLike) -> Path:
    """Absolute and normalised, symlinks kept: a linked src/ is still the repository's."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imported_names(tree: ast.AST, modname: str | None, is_pkg: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(module, fromlist) for every import statement anywhere in `tree`; relative imports resolved
    against `modname` (None for a script run as __main__, where they cannot work and are skipped)."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names = tuple(a.name for a in node.names if a.name != "*")
            if node.level:
                if modname is None:
                    continue
                package = modname.split(".") if is_pkg else modname.split(".")[:-1]
                if node.level - 1 > len(package):
                    continue
                package = package[: len(package) - (node.level - 1)]
                target = ".".join(package + ([node.module] if node.module else []))
                if not target:
                    continue
                out.append((target, names))
            elif node.module:
                out.append((node.module, names))
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            arg = node.args[0]
            if fname in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str) and arg.value and not arg.value.startswith("."):
                out.append((arg.value, ()))
    return out


def _parse(path: Path) -> ast.AST:
    with tokenize.open(path) as f:  # honours a coding declaration
        source = f.read()
    try:
        return ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise SyntaxError(f"{path}: cannot parse to follow its imports: {e}") from e


def import_closure(script_path: str | os.PathLike, root: str | os.PathLike, *,
                   search: list[str | os.PathLike] | None = None, module: str | None = None) -> list[str]:
    """Repo-relative paths (sorted, posix) of every project module that running `script_path` imports,
    transitively, package __init__.py files included; the script itself is not in the list.

    `search` is the import path to emulate (default: the script's directory, then `root/src`);
    `module` names the script when it is run with `python -m` (relative imports then resolve)."""
    root = _abs(root)
    script = Path(script_path)
    script = _abs(script if script.is_absolute() else root / script)
    if not script.is_file():
        raise FileNotFoundError(f"stage script {script} does not exist")
    if search is None:
        search = [script.parent, root / "src"]
    dirs = [Path(d) if Path(d).is_absolute() else root / d for d in search]
    dirs = [_abs(d) for d in dirs if d.is_dir()]

    seen: dict[Path, str | None] = {script: module}
    queue: list[Path] = [script]
    while queue:
        path = queue.pop()
        modname = seen[path]
        for target, fromlist in _imported_names(_parse(path), modname, _is_package(path)):
            chain = _resolve(target, dirs)
            if chain and chain[-1][0] == target and _is_package(chain[-1][1]):
                for name in fromlist:  # `from package import submodule`; a plain name resolves to nothing
                    chain += [c for c in _resolve(f"{target}.{name}", dirs) if c not in chain]
            for name, file in chain:
                file = _abs(file)
                if file not in seen:
                    seen[file] = name
                    queue.append(file)
    mods = []
    for file in seen:
        if file == script or file.stat().st_size == 0:  # an empty package marker: no code to depend on
            continue
        try:
            mods.append(file.relative_to(root).as_posix())
        except ValueError:  # resolved outside the repository (a search entry elsewhere): not project code
            continue
    return sorted(mods)



_PY = re.compile(r"^[\w./-]+\.py$")


def scripts_in_cmd(cmd: str) -> tuple[list[str], list[str]]:
    """(script paths, `-m` module names) that a stage cmd runs; tokens holding ${...} are skipped."""
    try:
        tokens = shlex.split(cmd, comments=False)
    except ValueError:
        tokens = cmd.split()
    scripts, modules = [], []
    for i, tok in enumerate(tokens):
        if "${" in tok:
            continue
        if tok == "-m" and i + 1 < len(tokens) and "${" not in tokens[i + 1]:
            modules.append(tokens[i + 1])
        elif _PY.match(tok):
            scripts.append(tok[2:] if tok.startswith("./") else tok)
    return scripts, modules


def stage_closure(cmd: str, root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(the scripts a stage cmd runs, the union of their import closures), repo-relative."""
    root = Path(root)
    scripts, modules = scripts_in_cmd(cmd)
    mods: set[str] = set()
    for s in scripts:
        mods.update(import_closure(s, root))
    for m in modules:
        search = [root, root / "src"]
        chain = _resolve(m, [d for d in search if d.is_dir()])
        if not chain or chain[-1][0] != m:
            continue  # not a project module (e.g. `python -m pytest`)
        path = chain[-1][1]
        if _is_package(path) and (path.parent / "__main__.py").is_file():
            path = path.parent / "__main__.py"
        mods.update(_abs(c[1]).relative_to(_abs(root)).as_posix() for c in chain)
        mods.add(_abs(path).relative_to(_abs(root)).as_posix())
        mods.update(import_closure(path, root, search=search, module=m))
    return scripts, sorted(mods - set(scripts))


def params_closure(keys: list[str], root: str | os.PathLike) -> list[str]:
    """The modules that checking these params keys imports: core/params.py loads each section's dataclass
    only when that section is checked, so a stage depends on the config modules of its own sections only."""
    registry = Path(root) / "src" / "pftlab" / "core" / "params.py"
    if not keys or not registry.exists():
        return []
    from pftlab.core.params import section_modules  # torch-free

    mods = set()
    for key in keys:
        for module in section_modules(key.replace("${item}", "x")):
            path = Path(root) / "src" / (module.replace(".", "/") + ".py")
            mods.add(path.relative_to(root).as_posix())
            mods.update(import_closure(path, root, search=[Path(root) / "src"], module=module))
    return sorted(mods)



def code_deps(kind: Kind, root: str | os.PathLike) -> list[str]:
    """The project modules a stage of this kind runs: its script's closure and what checking its params imports."""
    _, closure = stage_closure(kind.cmd, root)
    return sorted(set(closure) | set(params_closure(list(kind.params), root)))


# ---------------------------------------------------------------------------------------------------
# dvc.yaml, written from the declaration: block style, two-space indents, comments from the declaration
# ---------------------------------------------------------------------------------------------------

HEADER = ("# Generated from src/pftlab/core/pipeline.py by `python -m pftlab.core.deps --write`: edit it there.\n"
          "# The pipeline: `dvc dag` draws it. Each stage lists exactly the params and inputs it reads.\n")
COMMENT_COLUMN = 31


def _in_git(path: str) -> dict:
    return {path: {"cache": False}}


def stage_entry(kind: Kind, code: list[str]) -> dict:
    """The dvc.yaml entry of a kind: what DVC reads (`code`: its code deps)."""
    outs = [out if isinstance(out, str) else _in_git(out.path) for out in kind.outs]
    body = {"cmd": kind.cmd, "deps": [kind.script, *code, *kind.deps], "params": list(kind.params), "outs": outs,
            "metrics": [_in_git(path) for path in kind.metrics],
            "plots": [{c.path: {"cache": False, "x": c.x, "y": c.y}} for c in kind.plots]}
    body = {key: value for key, value in body.items() if value}
    if kind.foreach:
        return {"foreach": kind.foreach, "do": body}
    if kind.matrix:
        return {"matrix": dict(kind.matrix), **body}
    return body


def plots_entry() -> list:
    return [{plot.name: {"title": plot.title, "x": plot.x, "y": {plot.csv: plot.y}}} for plot in PLOTS]


def pipeline_doc(root: str | os.PathLike) -> dict:
    """dvc.yaml as data: what yaml.safe_load of the generated text gives."""
    return {"stages": {name: stage_entry(kind, code_deps(kind, root)) for name, kind in KINDS.items()},
            "plots": plots_entry()}


def _scalar(value) -> str:
    """A value as YAML writes it: plain where that reads back as the same value, else double-quoted; a tuple
    as a flow list (`[a, b]`, the plots' columns)."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_scalar, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    try:
        plain = yaml.safe_load(f"k: {text}") == {"k": value}
    except yaml.YAMLError:  # `a: b` inside a plain value
        plain = False
    return text if plain else json.dumps(text)


def _noted(line: str, note: str) -> str:
    return f"{line.ljust(COMMENT_COLUMN - 1)} # {note}" if note else line


def _lines(node, indent: int, notes: dict) -> list[str]:
    """Block YAML for a mapping or a list; `notes` puts a comment beside a key or item it names."""
    pad, out = " " * indent, []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                out += [_noted(f"{pad}{key}:", notes.get(key, "")), *_lines(value, indent + 2, notes)]
            else:
                out.append(_noted(f"{pad}{key}: {_scalar(value)}", notes.get(key, "")))
    else:
        for item in node:
            if isinstance(item, dict):  # `- key:` with its value indented under the key
                first, *rest = _lines(item, indent + 2, notes)
                out += [f"{pad}- {first.lstrip()}", *rest]
            else:
                out.append(_noted(f"{pad}- {_scalar(item)}", notes.get(item, "")))
    return out


def _comment(text: str, indent: int) -> list[str]:
    return [" " * indent + "# " + line for line in text.splitlines()]


def render(doc: dict) -> str:
    """The text of dvc.yaml for `pipeline_doc`'s data, with the declaration's comments; checked to read back as it."""
    lines = [HEADER.rstrip("\n"), "stages:"]
    for i, (name, entry) in enumerate(doc["stages"].items()):
        kind = KINDS[name]
        lines += ([""] if i else []) + _comment(kind.comment, 2) + _lines({name: entry}, 2, kind.notes)
    lines += ["", *_comment(PLOTS_COMMENT, 0), "plots:"]
    lines += _lines(doc["plots"], 2, {plot.name: plot.note for plot in PLOTS})
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != json.loads(json.dumps(doc)):  # (a tuple reads back as a list)
        raise RuntimeError("the generated dvc.yaml does not read back as the pipeline's declaration")
    return text


def generate(root: str | os.PathLike) -> str:
    return render(pipeline_doc(root))


def fanout(root: str | os.PathLike) -> dict:
    """{module: [stage kinds whose code it is]}, most-reached first: what a change to it reruns (a kind such as
    `policy` stands for every `policy@<algorithm>`)."""
    reach = {}
    for name, kind in KINDS.items():
        for module in code_deps(kind, root):
            reach.setdefault(module, []).append(name)
    return dict(sorted(reach.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def find_root(start: str | os.PathLike | None = None) -> Path:
    d = _abs(start or os.getcwd())
    for c in [d, *d.parents]:
        if (c / "dvc.yaml").is_file():
            return c
    here = Path(__file__).resolve().parents[3]
    if (here / "dvc.yaml").is_file():
        return here
    raise FileNotFoundError("no dvc.yaml in this directory or above it")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pftlab.core.deps", description=(__doc__ or "").split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs from what the pipeline generates")
    mode.add_argument("--write", action="store_true", help="write dvc.yaml from the pipeline")
    mode.add_argument("--fanout", action="store_true", help="for each module, the stage kinds a change to it reruns")
    ap.add_argument("--root", help="repository root (default: the nearest directory up with a dvc.yaml)")
    ap.add_argument("--file", default="dvc.yaml", help="the pipeline file, relative to the root (default dvc.yaml)")
    args = ap.parse_args(argv)

    root = _abs(args.root) if args.root else find_root()
    path = root / args.file

    if args.write or args.check:
        new = generate(root)
        old = path.read_text() if path.exists() else ""
        if new == old:
            print(f"{args.file}: as the pipeline generates it ({len(KINDS)} stage kinds)")
            return 0
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                                       f"{args.file} (committed)", f"{args.file} (generated)"))
            print(f"{args.file} differs from the pipeline (core/pipeline.py and the stages' imports); "
                  "fix with: python -m pftlab.core.deps --write", file=sys.stderr)
            return 1
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(new)
        os.replace(tmp, path)
        print(f"{args.file}: written from the pipeline ({len(KINDS)} stage kinds)")
        return 0

    if args.fanout:
        reach = fanout(root)
        for module, stages in reach.items():
            print(f"{len(stages):3d} of {len(KINDS)}  {module}: {' '.join(stages)}")
        return 0

    for name, kind in KINDS.items():
        print(f"{name}: {kind.script}")
        for m in code_deps(kind, root):
            print(f"  {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
