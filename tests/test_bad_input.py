"""Malformed input, tried broadly: every bad row is a counted skip or an error naming the file and line,
every bad param an error naming the key; never a traceback from inside a library, never a partial output."""
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pftlab.core.errors import DataError, ParamError
from pftlab.core.params import RULES, Params
from pftlab.lm.data import read_pairs

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Bye."}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=6)
bad_lines = st.one_of(
    st.binary(min_size=1, max_size=60),                                   # bytes, often not UTF-8 or JSON
    json_values.map(lambda v: json.dumps(v).encode()),                   # valid JSON, wrong shape
    st.fixed_dictionaries({"chosen": json_values, "rejected": json_values}).map(lambda v: json.dumps(v).encode()),
    st.sampled_from([                                                     # near misses of the real layout
        json.dumps({"chosen": GOOD["chosen"]}), json.dumps(GOOD | {"chosen": ""}),
        json.dumps(GOOD | {"rejected": GOOD["chosen"]}),                  # identical chosen and rejected
        json.dumps(GOOD | {"chosen": "no assistant turn"}),
        json.dumps(GOOD | {"rejected": "\n\nHuman: Other?\n\nAssistant: Bye."}),  # prompts differ
        json.dumps(GOOD | {"chosen": "\n\nHuman: Hi?\n\nAssistant:"}),     # empty reply
        json.dumps(GOOD)[:-7], "\ufeff" + json.dumps(GOOD)[1:],
    ]).map(str.encode),
)


@SETTINGS
@given(lines=st.lists(st.one_of(bad_lines, st.just(json.dumps(GOOD).encode())), min_size=1, max_size=20),
       gz=st.booleans(), max_bad=st.sampled_from([0.0, 0.5, 1.0]))
def test_every_row_is_kept_skipped_or_named(tmp_path, lines, gz, max_bad):
    path = tmp_path / ("rows.jsonl.gz" if gz else "rows.jsonl")
    data = b"\n".join(line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        rows, report = read_pairs({"id": str(path), "layout": "hh_rlhf"}, max_bad)
    except DataError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    bad = report["skipped_rows"]
    assert len(rows) + report["rows_skipped"] == sum(1 for line in data.splitlines() if line.strip())
    assert all(s.startswith("line ") and int(s.split(":")[0][5:]) >= 1 and s.split(": ", 1)[1] for s in bad)
    assert report["rows_malformed"] <= max_bad * (len(rows) + report["rows_skipped"])  # ties are not malformed
    assert report["rows_skipped"] == report["rows_malformed"] + report["rows_without_preference"]
    assert all(r["prompt"].endswith("Assistant:") and r["chosen"] != r["rejected"] for r in rows)


def test_truncated_and_empty_files_name_the_file(tmp_path):
    full = gzip.compress((json.dumps(GOOD) + "\n").encode() * 50)
    (tmp_path / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    (tmp_path / "empty.jsonl").write_bytes(b"")
    for name in ("cut.jsonl.gz", "empty.jsonl", "missing.jsonl"):
        with pytest.raises(DataError, match=str(tmp_path / name)):
            read_pairs({"id": str(tmp_path / name), "layout": "hh_rlhf"}, 0.5)


bad_values = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                       st.sampled_from([math.nan, math.inf, -math.inf, -1, -1e-3, 0, 0.0, 10**9, -(10**9), 1e300]),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _default():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


# What core/params.py refuses across keys: an algorithm name must be known; training seeds must differ from `seed`
# and from each other.
CROSS_KEY_RULES = ("names unknown algorithm", "repeats 'seed'", "more than once")


@SETTINGS
@given(key=st.sampled_from(sorted(k for k in RULES if not k.startswith("data.raw"))), value=bad_values)
@example(key="training_seeds.seeds", value=[0])  # `seed` itself
@example(key="training_seeds.seeds", value=[1, 1])
@example(key="algorithms", value={})  # found by hypothesis: a mapping where a list belongs was let through
@example(key="algorithms", value=[0])  # a list, as the rule wants, naming no algorithm: refused by name
def test_any_value_is_accepted_by_its_rule_or_refused_naming_the_key(key, value):
    tree = _default()
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    ok, _ = RULES[key]
    try:
        Params(tree).check(parents[0] if parents else key)
    except ParamError as e:
        assert f"'{key}'" in str(e) or "unknown key" in str(e)
        # a value its own rule accepts may still break a rule across keys, which names the key too
        assert not ok(value) or isinstance(value, dict) or any(x in str(e) for x in CROSS_KEY_RULES), str(e)
        return
    assert ok(value)


@SETTINGS
@given(key=st.sampled_from(sorted(RULES)), position=st.integers(0, 30), char=st.sampled_from("xq_1"))
def test_a_misspelt_key_is_named_with_a_suggestion(key, position, char):
    section, *rest = key.split(".")
    if not rest:
        return
    leaf = rest[-1]
    i = position % (len(leaf) + 1)
    typo = leaf[:i] + char + leaf[i:]
    tree = _default()
    node = tree
    for part in [section, *rest[:-1]]:
        node = node[part]
    node[typo] = node.pop(leaf)
    with pytest.raises(ParamError, match=r"unknown key '.*" + typo.replace(".", r"\.") + "'"):
        Params(tree).check(section)


def test_huge_and_empty_strings_and_a_prompt_longer_than_the_context():
    from pftlab.lm.model import encode_prompt
    from pftlab.lm.tokenizer import train_tokenizer

    tok = train_tokenizer(["Human: hello there\n\nAssistant: hi"] * 20, vocab_size=300)
    long_prompt = "\n\nHuman: " + "word " * 20_000 + "\n\nAssistant:"
    ids = encode_prompt(tok, long_prompt, 16)
    assert len(ids) == 16 and tok.decode(ids).endswith("Assistant:")  # the last tokens: the assistant turn stays
    assert encode_prompt(tok, "", 16) == [] or len(encode_prompt(tok, "", 16)) <= 16


def test_prepare_stage_refuses_a_bad_data_file_cleanly(tmp_path):
    tree = _default()
    tree["data"]["raw"] = "broken.jsonl.gz"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    (tmp_path / "broken.jsonl.gz").write_bytes(gzip.compress(b'{"chosen": 1}\n' * 10)[:-8])
    env = {**os.environ, "PFTLAB_MLFLOW": "0"}
    out = subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "broken.jsonl.gz" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "data" / "prepared").exists() and not (tmp_path / "metrics").exists()


@pytest.mark.parametrize("change, named", [
    ({"data": {"source": {"id": "data/raw/mine.jsonl", "layout": "hh_rlhf"}}}, "'pairs.source' is not"),
    ({"pairs": {"source": "human"}, "variants": {"rewards": ["min_length"]}}, "'variants.rewards' relabel"),
    ({"model": {"n_embd": 65, "n_head": 4}}, "'model.n_embd' must be divisible by 'model.n_head'"),
])
def test_a_rule_joining_two_sections_stops_the_first_stage_before_any_work(tmp_path, change, named):
    """prepare declares neither pairs nor variants, yet refuses their combination: no later stage finds it minutes in."""
    tree = _default()
    for section, values in change.items():
        tree[section] = {**tree.get(section, {}), **values}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    env = {**os.environ, "PFTLAB_MLFLOW": "0"}
    out = subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and named in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "data").exists()


def test_a_nonfinite_metric_is_written_as_null_with_a_warning():
    from pftlab.core.stage import without_nonfinite

    with pytest.warns(UserWarning, match="stage 'pairs': metric 'label_agrees_with_gold' is nan"):
        clean = without_nonfinite({"label_agrees_with_gold": float("nan"), "pairs": 3, "per": {"x": math.inf}}, "pairs")
    assert clean == {"label_agrees_with_gold": None, "pairs": 3, "per": {"x": None}}
    json.dumps(clean, allow_nan=False)


def test_a_stage_whose_output_folder_cannot_be_written_stops_before_any_work(tmp_path):
    """`metrics` is a file, not a folder: the prepare stage says which output it cannot write, in one line,
    before reading any data, and writes nothing."""
    tree = _default()
    tree["data"]["raw"] = str(ROOT / tree["data"]["raw"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    (tmp_path / "metrics").write_text("a file where the metrics folder should be")
    env = {**os.environ, "PFTLAB_MLFLOW": "0"}
    out = subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "cannot write" in out.stderr and "metrics/prepare.json" in out.stderr and "Not a directory" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics", "params.yaml"]


def test_stage_finishes_when_the_mlflow_server_refuses_connections(tmp_path):
    """A tracking URI nobody listens on: the stage warns once, finishes, and its metrics are on disk."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_default()))
    env = {**os.environ, "PFTLAB_MLFLOW": "1", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    code = ("from pftlab.core.stage import run_stage\n"
            "run_stage('tokenizer', lambda p, t: (t.log_metrics({'x': 1.0}), {'seed': p['seed']})[1])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("MLflow tracking disabled") == 1
    assert json.loads((tmp_path / "metrics" / "tokenizer.json").read_text())["seed"] == 0
