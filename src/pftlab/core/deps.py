"""The project code each DVC stage runs, computed from imports, so that dvc.yaml's deps cannot drift.

`import_closure(script, root)` follows the imports of a stage script with `ast`, transitively, and
returns every project module Python would execute for it: the modules named by `import a.b`,
`from a import b` (b a submodule or a name), `from a.b import name`, relative imports, imports inside
functions or `if`/`try` blocks, `importlib.import_module("a.b")` with a literal name, and the
`__init__.py` of every package on the way (Python runs them all; an empty one runs nothing and is left
out, so the lock file does not carry seven files that cannot change a number). A module is "project" when it
resolves to a file under the repository: the script's own directory (sys.path[0] for
`python stages/x.py`) or `src/` (where the editable install points). Everything else (torch, the
standard library) is left out. Nothing is imported: the closure needs only the standard library, and
dvc.yaml is read with a YAML parser (PyYAML's node tree: every value with its line).

CLI, from the repository root (or anywhere below it):

    python -m pftlab.core.deps            # each stage of dvc.yaml: its script(s) and their closure
    python -m pftlab.core.deps --check    # exit 1 if a stage's deps miss a module of its closure, or list one it does not import
    python -m pftlab.core.deps --write    # make the code deps of every stage exactly its closure

"Code deps" of a stage are its deps entries that end in `.py` and lie under `src/` or `stages/`,
other than the stage's own script. `--write` removes those that are not in the closure, adds the
missing ones (sorted, where the code deps were, else right after the script) and leaves every other
line of dvc.yaml alone: data deps, comments, order, params and outs. It edits lines, never re-dumps
the YAML, and it is idempotent: a second run changes nothing and does not touch the file. An entry
with the comment `# deps: keep` is never removed (for a .py read some other way than by import).
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CODE_DIRS = ("src/", "stages/")
KEEP_MARK = re.compile(r"#\s*deps:\s*keep\b")


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


# ---------------------------------------------------------------------------------------------------
# dvc.yaml, read with a YAML parser (PyYAML's node tree, which keeps every value's line and column) and
# edited by lines (comments and layout stay as they are)
# ---------------------------------------------------------------------------------------------------

def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _mapping(node) -> dict:
    """A YAML mapping node's entries, {key text: (key node, value node)}; {} for anything else."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}


def _text(node) -> str:
    """A scalar's text, a list's items joined by spaces (a cmd may be a list of commands), else ""."""
    if isinstance(node, yaml.ScalarNode):
        return node.value
    if isinstance(node, yaml.SequenceNode):
        return " ".join(_text(item) for item in node.value)
    return ""


@dataclass
class DepItem:
    line: int       # index into the file's lines
    path: str       # the value, unquoted
    comment: str    # trailing comment, with its '#', or ""


@dataclass
class Stage:
    name: str
    cmd: str
    deps_line: int | None                 # the `deps:` key line
    deps_end: int | None                  # end (exclusive) of its value
    items: list[DepItem] = field(default_factory=list)
    item_indent: int | None = None
    wdir: str | None = None
    params: list[str] = field(default_factory=list)  # the stage's params keys (params.yaml), as written

    @property
    def paths(self) -> list[str]:
        return [d.path for d in self.items]


def read_stages(text: str) -> list[Stage]:
    """The stages of a dvc.yaml text: each stage's cmd (foreach/matrix unexpanded), params keys, and deps with
    the line each is on, from the parser's node tree."""
    lines = text.splitlines()
    stages_node = _mapping(yaml.compose(text, Loader=yaml.SafeLoader)).get("stages", (None, None))[1]
    stages = []
    for name, (_, spec) in _mapping(stages_node).items():
        body = _mapping(spec)
        if "do" in body:  # foreach: cmd and deps sit under do
            body = {**body, **_mapping(body["do"][1])}
        wdir = _text(body["wdir"][1]) if "wdir" in body else None
        st = Stage(name, _text(body["cmd"][1]).strip() if "cmd" in body else "", None, None, wdir=wdir)
        if "params" in body and isinstance(body["params"][1], yaml.SequenceNode):
            for item in body["params"][1].value:  # a key, or {params file: [keys]} (named by its file)
                st.params += [item.value] if isinstance(item, yaml.ScalarNode) else list(_mapping(item))
        if "deps" in body:
            key, deps = body["deps"]
            if isinstance(deps, yaml.SequenceNode) and deps.flow_style:
                raise ValueError(f"dvc.yaml, stage {name}: deps written inline ({lines[key.start_mark.line].strip()!r}); "
                                 f"write them as a block list, one `- path` a line")
            st.deps_line = st.deps_end = key.start_mark.line
            for item in deps.value if isinstance(deps, yaml.SequenceNode) else []:
                if not isinstance(item, yaml.ScalarNode):
                    continue
                line = item.start_mark.line
                rest = lines[line][item.end_mark.column:].strip() if item.end_mark.line == line else ""
                st.items.append(DepItem(line, item.value, rest if rest.startswith("#") else ""))
                if st.item_indent is None:
                    st.item_indent = _indent(lines[line])
                st.deps_end = item.end_mark.line
            st.deps_end += 1
        stages.append(st)
    return stages


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


def is_code_dep(path: str, scripts: list[str]) -> bool:
    return path.endswith(".py") and path.startswith(CODE_DIRS) and path not in scripts


@dataclass
class Plan:
    stage: Stage
    scripts: list[str]
    closure: list[str]
    missing: list[str]
    extra: list[str]


def plan(text: str, root: str | os.PathLike) -> list[Plan]:
    plans = []
    for st in read_stages(text):
        if st.wdir not in (None, ".", "./"):
            raise ValueError(f"dvc.yaml, stage {st.name}: wdir {st.wdir!r} is not supported")
        scripts, closure = stage_closure(st.cmd, root)
        closure = sorted(set(closure) | set(params_closure(st.params, root)))
        if not scripts and not closure:
            plans.append(Plan(st, [], [], [], []))
            continue
        want = scripts + closure
        have = st.paths
        missing = [p for p in want if p not in have]
        extra = [d.path for d in st.items
                 if is_code_dep(d.path, scripts) and d.path not in closure and not KEEP_MARK.search(d.comment)]
        plans.append(Plan(st, scripts, closure, missing, extra))
    return plans


def fanout(plans: list[Plan]) -> dict:
    """{module: [stage entries of dvc.yaml whose code it is]}, most-reached first: what a change to it reruns (an
    entry such as `policy` stands for every `policy@<algorithm>`)."""
    reach = {}
    for p in plans:
        for module in p.closure:
            reach.setdefault(module, []).append(p.stage.name)
    return dict(sorted(reach.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def rewrite(text: str, plans: list[Plan]) -> str:
    """`text` with each planned stage's code deps made exactly its closure (scripts added if absent)."""
    nl = "\r\n" if "\r\n" in text else "\n"
    added_nl = bool(text) and not text.endswith("\n")
    lines = (text + nl if added_nl else text).splitlines(keepends=True)
    edits: list[tuple[int, int, list[str]]] = []  # disjoint line ranges and their replacements
    for p in plans:
        st = p.stage
        if not p.missing and not p.extra:
            continue
        if st.deps_line is None:
            raise ValueError(f"dvc.yaml, stage {st.name}: no deps key; add `deps:` listing {p.scripts[0]}")
        indent = " " * (st.item_indent if st.item_indent is not None else _indent(lines[st.deps_line]) + 2)
        managed = {d.line: d for d in st.items
                   if is_code_dep(d.path, p.scripts) and not KEEP_MARK.search(d.comment)}
        kept = {d.path for d in st.items if d.line not in managed}
        comments = {d.path: d.comment for d in managed.values() if d.comment}
        start, end = st.deps_line + 1, st.deps_end
        # the code deps go where the first of them was, else after the last script entry, else first
        script_lines = [d.line for d in st.items if d.path in p.scripts]
        at = min(managed) if managed else max(script_lines) + 1 if script_lines else start
        new_scripts = [indent + "- " + s + nl for s in p.scripts if s not in kept]
        new_code = [indent + "- " + c + ("  " + comments[c] if c in comments else "") + nl
                    for c in p.closure if c not in kept]
        out: list[str] = list(new_scripts)  # a script that is not listed goes first of all
        for i in range(start, end + 1):
            if i == at:
                out += new_code
            if i < end and i not in managed:
                out.append(lines[i])
        edits.append((start, end, out))
    for start, end, repl in sorted(edits, reverse=True):
        lines[start:end] = repl
    out_text = "".join(lines)
    return out_text[: -len(nl)] if added_nl and out_text.endswith(nl) else out_text


def find_root(start: str | os.PathLike | None = None) -> Path:
    d = _abs(start or os.getcwd())
    for c in [d, *d.parents]:
        if (c / "dvc.yaml").is_file():
            return c
    here = Path(__file__).resolve().parents[3]
    if (here / "dvc.yaml").is_file():
        return here
    raise FileNotFoundError("no dvc.yaml in this directory or above it")


def _verify(text: str, root: Path) -> None:
    """After a rewrite: nothing left to change, and it still parses to the same stages, with the same
    non-code deps, as before."""
    again = plan(text, root)
    bad = [p.stage.name for p in again if p.missing or p.extra]
    if bad:
        raise RuntimeError(f"rewrite did not converge for stages {bad}; dvc.yaml left as it was")
    doc = yaml.safe_load(text)
    for p in again:
        spec = doc["stages"][p.stage.name]
        deps = (spec.get("do", spec) or {}).get("deps") if isinstance(spec, dict) else None
        if p.scripts and list(deps or []) != p.stage.paths:
            raise RuntimeError(f"rewrite of stage {p.stage.name} does not read back as written; dvc.yaml left as it was")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pftlab.core.deps", description=(__doc__ or "").split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if any stage's code deps differ from its closure")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps of dvc.yaml to the closures")
    mode.add_argument("--fanout", action="store_true", help="for each module, the stage entries a change to it reruns")
    ap.add_argument("--root", help="repository root (default: the nearest directory up with a dvc.yaml)")
    ap.add_argument("--file", default="dvc.yaml", help="the pipeline file, relative to the root (default dvc.yaml)")
    args = ap.parse_args(argv)

    root = _abs(args.root) if args.root else find_root()
    path = root / args.file
    text = path.read_text()
    plans = plan(text, root)

    if args.write:
        new = rewrite(text, plans)
        for p in plans:
            if p.missing or p.extra:
                print(f"{p.stage.name}: +{len(p.missing)} -{len(p.extra)}"
                      + "".join(f"\n  + {m}" for m in p.missing) + "".join(f"\n  - {m}" for m in p.extra))
        if new == text:
            print(f"{args.file}: code deps already match the import closures ({len(plans)} stages)")
            return 0
        _verify(new, root)
        if path.read_text() != text:
            print(f"{args.file} changed while this ran; run again", file=sys.stderr)
            return 1
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(new)
        os.replace(tmp, path)
        print(f"{args.file}: rewrote the code deps of {sum(bool(p.missing or p.extra) for p in plans)} stages")
        return 0

    if args.check:
        bad = [p for p in plans if p.missing or p.extra]
        for p in bad:
            print(f"{p.stage.name}:")
            for m in p.missing:
                print(f"  missing {m}")
            for m in p.extra:
                print(f"  extra   {m}  (not imported; mark it `# deps: keep` to keep it)")
        if bad:
            print(f"{len(bad)} of {len(plans)} stages drifted; fix with: python -m pftlab.core.deps --write",
                  file=sys.stderr)
            return 1
        print(f"{args.file}: code deps match the import closures ({len(plans)} stages)")
        return 0

    if args.fanout:
        reach = fanout(plans)
        for module, stages in reach.items():
            print(f"{len(stages):3d} of {len(plans)}  {module}: {' '.join(stages)}")
        return 0

    for p in plans:
        print(f"{p.stage.name}: {' '.join(p.scripts) or '(no python script in cmd)'}")
        for m in p.closure:
            print(f"  {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
