"""Your own preference data: every layout from a small file of its own, and the bad inputs people meet
(each a counted skip with its row, or one line naming the file and row, never a library traceback)."""
import csv
import gzip
import json
import re

import pytest

from pftlab.core.errors import DataError
from pftlab.lm import layouts, readers

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
         {"role": "user", "content": "Name a colour."}]
HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name a colour.\n\nAssistant: Red.",
      "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name a colour.\n\nAssistant: I will not."}

ROWS = {  # layout -> a row in it whose pair is (SYSTEM? + TURNS, "Red.", "I will not.")
    "hh_rlhf": HH,
    "prompt_chosen_rejected": {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "I will not."},
    "conversational": {"prompt": [SYSTEM, *TURNS], "chosen": [{"role": "assistant", "content": "Red."}],
                       "rejected": [{"role": "assistant", "content": "I will not."}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                                   {"from": "human", "value": "Name a colour."}],
                 "chosen": {"from": "gpt", "value": "Red."}, "rejected": {"from": "gpt", "value": "I will not."},
                 "system": "You are terse."},
    "openai": {"input": {"messages": [SYSTEM, *TURNS]},
               "preferred_output": [{"role": "assistant", "content": "Red."}],
               "non_preferred_output": [{"role": "assistant", "content": [{"type": "text", "text": "I will not."}]}]},
    "alpaca_farm": {"instruction": "Name a colour.", "input": "", "output_1": "I will not.", "output_2": "Red.", "preference": 2},
    "ultrafeedback_binarized": {"prompt": "Name a colour.",
                                "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}],
                                "rejected": [{"role": "user", "content": "Name a colour."},
                                             {"role": "assistant", "content": "I will not."}],
                                "score_chosen": 8.0, "score_rejected": 3.0},
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("layout", list(ROWS))
def test_each_layout_from_its_own_file_gives_the_pair_with_every_turn(tmp_path, layout):
    source = readers.read_source(str(write_jsonl(tmp_path / f"{layout}.jsonl", [ROWS[layout]])))
    where, row = source.rows[0]
    assert where == "line 1" and not source.unreadable and len(source.digest) == 64
    layouts.check_columns(source.rows, layout, {}, source.name, "data.source")
    pair = layouts.to_pair(row, layout)
    assert (pair.chosen, pair.rejected) == ("Red.", "I will not.")
    multi_turn = layout in ("hh_rlhf", "conversational", "sharegpt", "openai")
    assert [m["content"] for m in pair.messages if m["role"] != "system"] == (
        [t["content"] for t in TURNS] if multi_turn else ["Name a colour."])
    assert (pair.messages[0] == SYSTEM) == (layout in ("conversational", "sharegpt", "openai"))
    prompt, chosen, rejected = layouts.render(pair)  # no chat template: the plain (hh) template
    assert prompt.endswith("\n\nAssistant:") or layout in ("prompt_chosen_rejected", "alpaca_farm")
    if multi_turn:
        assert "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name a colour.\n\nAssistant:" in prompt
        assert chosen == " Red." and rejected == " I will not."
    if layout == "hh_rlhf":  # byte for byte as written
        assert prompt + chosen == HH["chosen"]


def test_implicit_prompt_and_renamed_columns():
    row = {"chosen_messages": [*TURNS, {"role": "assistant", "content": "Red."}],
           "rejected_messages": [*TURNS, {"role": "assistant", "content": "Blue."}]}
    columns = {"chosen": "chosen_messages", "rejected": "rejected_messages"}
    layouts.check_columns([("line 1", row)], "conversational", columns, "f.jsonl", "data.source")
    pair = layouts.to_pair(row, "conversational", columns)
    assert pair.messages == TURNS and (pair.chosen, pair.rejected) == ("Red.", "Blue.")
    different = {**row, "rejected_messages": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(layouts.Skip, match="do not share a prompt"):
        layouts.to_pair(different, "conversational", columns)


def test_a_chat_template_renders_every_turn_and_the_system_message():
    class Tok:  # what apply_chat_template receives is what matters here; transformers' own is tested upstream
        chat_template = "yes"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    pair = layouts.to_pair(ROWS["sharegpt"], "sharegpt")
    assert layouts.render(pair, Tok()) == ("<system>You are terse.<user>Hi<assistant>Hello.<user>Name a colour.<assistant>",
                                           "Red.", "I will not.")


def test_a_missing_layout_suggests_one_and_never_guesses():
    for layout, row in ROWS.items():
        with pytest.raises(DataError, match="layout is not set") as err:
            layouts.check_columns([("line 1", row)], None, {}, "f.jsonl", "data.source")
        assert f"set data.source.layout: {layout}" in str(err.value)  # each row's columns name its own layout
    assert layouts.suggest_layout(ROWS["sharegpt"]) == "sharegpt"
    assert layouts.suggest_layout(ROWS["ultrafeedback_binarized"]) == "ultrafeedback_binarized"
    with pytest.raises(DataError, match="no column 'conversations' of layout 'sharegpt'.*look like layout 'hh_rlhf'"):
        layouts.check_columns([("line 1", HH)], "sharegpt", {}, "f.jsonl", "data.source")
    with pytest.raises(DataError, match="did you mean 'sharegpt'"):
        layouts.check_columns([("line 1", HH)], "sharegtp", {}, "f.jsonl", "data.source")


def test_ties_and_fractional_preferences_are_counted_as_such():
    alpaca = ROWS["alpaca_farm"]
    with pytest.raises(layouts.Skip, match=r"tie \(preference 1.5\)"):
        layouts.to_pair({**alpaca, "preference": 1.5}, "alpaca_farm")
    leaning = layouts.to_pair({**alpaca, "preference": 1.25}, "alpaca_farm")
    assert leaning.chosen == "I will not." and "fractional" in leaning.note
    assert layouts.to_pair({**alpaca, "preference": "2"}, "alpaca_farm").chosen == "Red."  # from a CSV cell
    with pytest.raises(layouts.NoPreference, match=r"tie \(preference 0\)"):  # alpaca_eval's "equally good"
        layouts.to_pair({**alpaca, "preference": 0}, "alpaca_farm")
    with pytest.raises(layouts.Skip, match="outside") as malformed:
        layouts.to_pair({**alpaca, "preference": 3}, "alpaca_farm")
    assert not isinstance(malformed.value, layouts.NoPreference)
    with pytest.raises(layouts.NoPreference, match="tie"):
        layouts.to_pair({**ROWS["ultrafeedback_binarized"], "score_rejected": 8.0}, "ultrafeedback_binarized")
    with pytest.raises(layouts.NoPreference, match="identical"):
        layouts.to_pair({**alpaca, "output_1": "Red."}, "alpaca_farm")


@pytest.mark.parametrize("spelling", ["text", "value"])
def test_content_parts_in_either_spelling_are_read_and_other_parts_skip_the_row(spelling):
    parts = lambda *texts: [{"type": "text", spelling: t} for t in texts]  # noqa: E731
    row = {"conversations": [{"from": "human", "value": "Name a "}],
           "chosen": {"from": "gpt", "value": parts("Re", "d.")}, "rejected": {"from": "gpt", "value": parts("No.")}}
    row["conversations"][0]["value"] = parts("Name a ", "colour.")  # LLaMA-Factory's v1 shape: a list of parts
    pair = layouts.to_pair(row, "sharegpt")
    assert pair.messages == [{"role": "user", "content": "Name a colour."}] and (pair.chosen, pair.rejected) == ("Red.", "No.")
    image = {**row, "chosen": {"from": "gpt", "value": [*parts("Red."), {"type": "image_url", "image_url": "x"}]}}
    with pytest.raises(layouts.Skip, match="'chosen' has a image_url content part: only text is read"):
        layouts.to_pair(image, "sharegpt")


class TemplateTokenizer:
    """A chat template with (SmolLM2, Qwen) or without a default system turn."""
    chat_template = "yes"

    def __init__(self, default_system):
        self.default_system = default_system

    def apply_chat_template(self, messages, tokenize, add_generation_prompt=False):
        if messages[0]["role"] != "system" and self.default_system:
            messages = [{"role": "system", "content": self.default_system}, *messages]
        return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + ("<|assistant|>" * add_generation_prompt)


def test_the_split_follows_the_conversation_not_its_rendering_and_a_default_system_prompt_is_said(tmp_path):
    from pftlab.lm.data import prepare, read_pairs

    rows = [{**ROWS["conversational"], "prompt": [{"role": "user", "content": f"Question {i}?"}]} for i in range(100)]
    spec = {"id": str(write_jsonl(tmp_path / "c.jsonl", rows)), "layout": "conversational"}
    plain, report = read_pairs(spec, 0.0)
    assert report["template_adds_system_prompt"] is False
    with pytest.warns(UserWarning, match="adds the model's default system prompt to the 100 prompts that have none"):
        templated, report = read_pairs(spec, 0.0, TemplateTokenizer("You are SmolLM."))
    assert report["template_adds_system_prompt"] is True and templated[0]["prompt"].startswith("<|system|>You are SmolLM.")
    assert not layouts.template_adds_system_prompt(TemplateTokenizer(""))

    class Alpaca(TemplateTokenizer):  # prints a system text bare, with no header, and none by default
        def apply_chat_template(self, messages, tokenize, add_generation_prompt=False):
            return "".join(m["content"] + "\n\n" if m["role"] == "system" else f"### Instruction:\n{m['content']}\n"
                           for m in messages)
    assert not layouts.template_adds_system_prompt(Alpaca(""))
    broken = TemplateTokenizer("x")
    broken.apply_chat_template = lambda *a, **k: None
    assert not layouts.template_adds_system_prompt(broken)
    eval_side = lambda kept: sorted(re.search(r"Question \d+", r["prompt"])[0]  # noqa: E731
                                    for r in prepare(kept, 0.3)["prompts_eval"])
    assert eval_side(plain) == eval_side(templated) and 20 <= len(eval_side(plain)) < 60
    # two conversations a template renders alike (it trims whitespace) are one prompt, on one side of the split
    trimmed = [{**r, "split_key": r["split_key"] + " " * (i % 2)} for i, r in enumerate(templated * 2)]
    splits = prepare(trimmed, 0.3)
    assert not {r["prompt"] for r in splits["prompts_train"]} & {r["prompt"] for r in splits["prompts_eval"]}


def test_an_empty_or_small_evaluation_split_is_refused_or_warned(tmp_path):
    from pftlab.lm.data import prepare

    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(10)]
    with pytest.raises(DataError, match="data.eval_fraction = 0.0 leaves no eval prompt among the 10 rows: raise it"):
        prepare(rows, 0.0)
    with pytest.warns(UserWarning, match=r"only \d+ evaluation prompts .* intervals over prompts will be wide"):
        prepare(rows, 0.5)


def test_roles_are_checked():
    bad_role = {**ROWS["conversational"], "prompt": [{"role": "narrator", "content": "x"}]}
    with pytest.raises(layouts.Skip, match="unknown role 'narrator'"):
        layouts.to_pair(bad_role, "conversational")
    ends_with_assistant = {**ROWS["conversational"], "prompt": TURNS[:2]}
    with pytest.raises(layouts.Skip, match="ends with a assistant turn"):
        layouts.to_pair(ends_with_assistant, "conversational")


def test_one_list_among_strings_changes_no_other_row(tmp_path):
    """A JSON loader that infers a column's type from the whole file re-read other rows' strings as JSON
    (quotes lost, "63" became 63); row by row, only the odd row is skipped."""
    rows = [{"prompt": "p1", "chosen": "63", "rejected": "\"quoted\""},
            {"prompt": "p2", "chosen": ["a", "list"], "rejected": "r"},
            {"prompt": "p3", "chosen": "c3", "rejected": "r3"}]
    source = readers.read_source(str(write_jsonl(tmp_path / "mixed.jsonl", rows)))
    kept, skipped = [], []
    for where, row in source.rows:
        try:
            kept.append(layouts.to_pair(row, "prompt_chosen_rejected"))
        except layouts.Skip as s:
            skipped.append((where, str(s)))
    assert kept[0].chosen == "63" and kept[0].rejected == "\"quoted\"" and len(kept) == 2
    assert skipped == [("line 2", "'chosen' is a list, expected text")]


def test_other_file_formats(tmp_path):
    rows = [ROWS["prompt_chosen_rejected"], {**ROWS["prompt_chosen_rejected"], "prompt": "Another, with a comma"}]
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=1))
    for delimiter, name in ((",", "a.csv"), ("\t", "a.tsv")):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.json", "a.csv", "a.tsv", "a.jsonl.gz", "a.parquet"):
        source = readers.read_source(str(tmp_path / name))
        assert [r for _, r in source.rows] == rows, name
    assert [w for w, _ in readers.read_source(str(tmp_path / "a.csv")).rows] == ["line 2", "line 3"]
    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    write_jsonl(folder / "train-00000.jsonl", rows[:1])
    write_jsonl(folder / "test-00000.jsonl", rows[1:])
    assert [r for _, r in readers.read_source(str(tmp_path / "repo"), split="test").rows] == rows[1:]


def test_files_that_cannot_be_read_are_one_line_naming_file_and_row(tmp_path):
    good = json.dumps(ROWS["prompt_chosen_rejected"]).encode() + b"\n"
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(good * 50)[:-20])
    (tmp_path / "cut.json").write_text('[{"prompt": "p", "chosen": "c", "rejected": "r"},\n{"prompt": "q", "cho')
    (tmp_path / "latin1.csv").write_bytes(b"prompt,chosen,rejected\np,c,r\ncaf\xe9,c,r\n")
    cases = {"cut.jsonl.gz": "truncated or corrupt gzip", "cut.json": "line 2, column .*truncated",
             "latin1.csv": "line 3: byte 0xe9 is not UTF-8", "missing.jsonl": "file not found",
             "data.xlsx": "unknown file type"}
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    for name, message in cases.items():
        with pytest.raises(DataError, match=message) as err:
            readers.read_source(str(tmp_path / name))
        assert "\n" not in str(err.value) and name in str(err.value)


def test_a_mistyped_local_path_is_not_sent_to_the_hub(tmp_path):
    for spec in ("data/my_pairs.jsonl", "./pairs", str(tmp_path / "nope"), "pairs.parquet"):
        with pytest.raises(DataError, match="file not found") as err:
            readers.read_source(spec)
        assert "hf download" not in str(err.value)
    assert not readers.looks_local("HuggingFaceH4/ultrafeedback_binarized")


def test_bad_rows_of_a_jsonl_file_are_counted_with_their_line(tmp_path):
    good = json.dumps(ROWS["prompt_chosen_rejected"]).encode()
    (tmp_path / "f.jsonl").write_bytes(b"\n".join([good, b"\xff\xfe not utf-8", b"[1, 2]", good[:-5]]) + b"\n")
    source = readers.read_source(str(tmp_path / "f.jsonl"))
    assert len(source.rows) == 1
    assert source.unreadable == [("line 2", "undecodable bytes (not UTF-8)"), ("line 3", "not a JSON object"),
                                 ("line 4", "invalid JSON (Unterminated string starting at)")]


def test_max_bad_fraction_holds_for_every_layout_and_skips_name_their_rows(tmp_path):
    from pftlab.lm.data import read_pairs

    rows = [{"instruction": f"Q{i}", "output_1": "a", "output_2": "b", "preference": 1.5 if i % 3 else 1} for i in range(9)]
    with open(tmp_path / "ties.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    spec = {"id": str(tmp_path / "ties.csv"), "layout": "alpaca_farm"}
    kept, report = read_pairs(spec, 0.0)  # ties are skipped, but not against the bad-row budget
    assert len(kept) == 3 and report["skipped_by_reason"] == {"tie (preference 1.5)": 6}
    assert report["rows_without_preference"] == 6 and report["rows_malformed"] == 0
    assert report["skipped_rows"][0] == "line 3: tie (preference 1.5)" and report["rows_read"] == 9
    rows = [{**r, "preference": "x" if i % 3 else r["preference"]} for i, r in enumerate(rows)]
    rows[1]["preference"] = 1.5
    with open(tmp_path / "bad.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    spec = {"id": str(tmp_path / "bad.csv"), "layout": "alpaca_farm"}
    with pytest.raises(DataError, match=r"bad.csv: 5 of 9 rows malformed .*max_bad_fraction=0.5; ties, 1, are not "
                                        r"counted\); first: line 4: 'preference' is 'x'"):
        read_pairs(spec, 0.5)
    with pytest.warns(UserWarning, match="skipped 5 malformed rows of 9"):
        kept, report = read_pairs(spec, 0.7)
    assert len(kept) == 3 and report["rows_malformed"] == 5 and report["rows_without_preference"] == 1
