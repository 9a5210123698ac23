"""The formats people keep preference data in, each a named layout, mapped to one pair: the prompt as
chat messages (every turn, the system message too), the chosen and the rejected reply.

    layout                   columns (after `data.source.columns` renames theirs to these)
    hh_rlhf                  chosen, rejected: whole "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogues (Anthropic hh-rlhf)
    prompt_chosen_rejected   prompt, chosen, rejected: text (TRL's standard format; TL;DR comparisons)
    conversational           [prompt,] chosen, rejected: message lists (TRL's conversational format; without
                             `prompt` the prompt is the turns chosen and rejected share, the "implicit prompt")
    sharegpt                 conversations (from/value turns), chosen, rejected (one from/value message each),
                             [system] (ShareGPT / LLaMA-Factory preference data)
    openai                   input.messages, preferred_output, non_preferred_output (OpenAI preference fine-tuning)
    alpaca_farm              instruction, [input], output_1, output_2, preference (1 or 2; AlpacaFarm and
                             alpaca_eval annotations: 1.5 and 0 are ties, other fractions lean to one side)
    ultrafeedback_binarized  prompt, chosen, rejected (message lists ending with the reply), [score_chosen,
                             score_rejected] (HuggingFaceH4/ultrafeedback_binarized)

A message is {"role" or "from": ..., "content" or "value": ...}, the content text or a list of text parts
({"type": "text", "text" or "value": ...}); roles human/user, gpt/assistant/model/bot, system. A row that does
not fit is skipped with its reason (`NoPreference` for a tie, counted apart); `LayoutError` (a DataError) is for
what is wrong with the whole file: a missing layout (with the layout its columns suggest), columns it lacks.

Rendering (`render`): with the tokenizer's chat template when it has one (`apply_chat_template`, the
generation prompt added; replies are the bare message text, EOS added at tokenization). Otherwise the plain
template of the default task, the hh-rlhf convention: each turn as "\\n\\nHuman: ...", "\\n\\nAssistant: ...",
a system message as "\\n\\nSystem: ...", the prompt ending in "\\n\\nAssistant:" and each reply starting with a
space. hh-rlhf rows keep their text byte for byte; text layouts (prompt_chosen_rejected, alpaca_farm) keep
the prompt as written, since their prompts are formatted already (e.g. TL;DR's "TL;DR:").
"""
import difflib
import math
from dataclasses import dataclass

from pftlab.core.errors import DataError
from pftlab.lm.config import DATASET_LAYOUTS

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
ROLES = {"user": "user", "human": "user", "system": "system", "assistant": "assistant", "gpt": "assistant",
         "model": "assistant", "bot": "assistant", "chatgpt": "assistant"}
PLAIN_NAMES = {"system": "System", "user": "Human", "assistant": "Assistant"}


class LayoutError(DataError):
    pass


class Skip(Exception):
    """A row that does not fit its layout: the reason names the column."""


class NoPreference(Skip):
    """A well-formed row that prefers neither reply (a tie, two identical replies): skipped, and counted apart from
    malformed rows, so a file's ties do not spend its `data.max_bad_fraction`."""


@dataclass
class Pair:
    messages: list  # the prompt: [{"role", "content"}], ending with the user's turn
    chosen: str
    rejected: str
    plain: tuple = None  # (prompt, chosen, rejected) exactly as written, for layouts whose text is already formatted
    note: str = ""  # kept, but worth counting (e.g. a fractional preference)


# --- fields -------------------------------------------------------------------------------------------------
def _type(value) -> str:
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else \
        "empty" if value is None else type(value).__name__


def text(row, column) -> str:
    value = row.get(column)
    if not isinstance(value, str):
        raise Skip(f"'{column}' is {_type(value)}, expected text")
    if not value.strip():
        raise Skip(f"'{column}' is empty")
    return value


def message(value, column) -> dict:
    if not isinstance(value, dict):
        raise Skip(f"'{column}' holds {_type(value)} where a message is expected")
    role = value.get("role", value.get("from"))
    content = value.get("content", value.get("value"))
    if isinstance(content, list):  # content parts: {"type": "text", "text": ...} (OpenAI, transformers) or "value"
        kinds = [p.get("type") if isinstance(p, dict) else _type(p) for p in content]  # (LLaMA-Factory)
        if any(kind != "text" for kind in kinds):
            raise Skip(f"'{column}' has a {next(k for k in kinds if k != 'text')} content part: only text is read")
        parts = [p.get("text", p.get("value")) for p in content]
        content = "".join(parts) if parts and all(isinstance(t, str) for t in parts) else None
    if not isinstance(role, str) or role.lower() not in ROLES:
        raise Skip(f"'{column}' has a message with unknown role {role!r}")
    if not isinstance(content, str):
        raise Skip(f"'{column}' has a {role} message without text content")
    return {"role": ROLES[role.lower()], "content": content}


def messages(row, column) -> list:
    value = row.get(column)
    if isinstance(value, str):
        raise Skip(f"'{column}' is text, expected a list of messages (layout prompt_chosen_rejected takes text)")
    if not isinstance(value, list) or not value:
        raise Skip(f"'{column}' is {_type(value) if value != [] else 'an empty list'}, expected a list of messages")
    return [message(m, column) for m in value]


def _reply(turns: list, column) -> str:
    if turns[-1]["role"] != "assistant":
        raise Skip(f"'{column}' does not end with an assistant message")
    if not turns[-1]["content"].strip():
        raise Skip(f"'{column}' has an empty reply")
    return turns[-1]["content"]


def _prompt_ok(prompt: list, where="prompt") -> list:
    if not prompt:
        raise Skip(f"no prompt: the {where} has no user turn")
    if prompt[-1]["role"] != "user":
        raise Skip(f"the {where} ends with a {prompt[-1]['role']} turn, not the user's")
    if any(m["role"] == "system" for m in prompt[1:]):
        raise Skip(f"the {where} has a system message after its first turn")
    return prompt


# --- layouts -------------------------------------------------------------------------------------------------
def split_dialogue(dialogue: str):
    """(prompt, reply) at the last assistant turn, or None when there is no assistant turn."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        return None
    return dialogue[: cut + len(ASSISTANT)], dialogue[cut + len(ASSISTANT) :]


def dialogue_turns(prompt: str) -> list:
    """hh-rlhf prompt text -> messages: each "\\n\\nHuman:" / "\\n\\nAssistant:" starts a turn."""
    turns, rest = [], prompt
    marks = {HUMAN: "user", ASSISTANT: "assistant"}
    while rest:
        starts = {m: rest.find(m) for m in marks if rest.find(m) >= 0}
        if not starts:
            break
        mark = min(starts, key=starts.get)
        if turns and starts[mark] > 0:
            turns[-1]["content"] += rest[: starts[mark]]
        rest = rest[starts[mark] + len(mark) :]
        turns.append({"role": marks[mark], "content": ""})
    if turns and rest:
        turns[-1]["content"] += rest
    for t in turns:
        t["content"] = t["content"].strip()
    return [t for t in turns if not (t["role"] == "assistant" and not t["content"])]


def hh_rlhf(row) -> Pair:
    chosen, rejected = split_dialogue(text(row, "chosen")), split_dialogue(text(row, "rejected"))
    if chosen is None or rejected is None:
        raise Skip("no '\\n\\nAssistant:' turn")
    if chosen[0] != rejected[0]:
        raise Skip("chosen and rejected do not share a prompt")
    if not chosen[1].strip() or not rejected[1].strip():
        raise Skip("empty reply")
    turns = dialogue_turns(chosen[0])
    if not turns or turns[-1]["role"] != "user":
        raise Skip("no '\\n\\nHuman:' turn before the last assistant turn")
    return Pair(turns, chosen[1].strip(), rejected[1].strip(), plain=(chosen[0], chosen[1], rejected[1]))


def prompt_chosen_rejected(row) -> Pair:
    prompt = text(row, "prompt")
    chosen, rejected = text(row, "chosen"), text(row, "rejected")
    return Pair([{"role": "user", "content": prompt}], chosen, rejected, plain=(prompt, chosen, rejected))


def _conversation_pair(prompt, chosen_turns, rejected_turns) -> Pair:
    """A prompt (None: implicit) and two message lists, each ending with its reply."""
    chosen, rejected = _reply(chosen_turns, "chosen"), _reply(rejected_turns, "rejected")
    if prompt is None:  # implicit prompt: the turns before the replies, the same in both
        if chosen_turns[:-1] != rejected_turns[:-1]:
            raise Skip("chosen and rejected do not share a prompt")
        prompt = chosen_turns[:-1]
    else:  # explicit prompt; a reply list may repeat it (ultrafeedback) or hold only the reply (TRL)
        for turns, column in ((chosen_turns, "chosen"), (rejected_turns, "rejected")):
            if len(turns) > 1 and turns[:-1] != prompt:
                raise Skip(f"'{column}' holds turns before its reply that differ from the prompt")
    return Pair(_prompt_ok(list(prompt)), chosen, rejected)


def conversational(row) -> Pair:
    prompt = messages(row, "prompt") if row.get("prompt") is not None else None
    return _conversation_pair(prompt, messages(row, "chosen"), messages(row, "rejected"))


def sharegpt(row) -> Pair:
    prompt = messages(row, "conversations")
    if row.get("system"):
        prompt = [{"role": "system", "content": text(row, "system")}, *prompt]
    chosen, rejected = message(row.get("chosen"), "chosen"), message(row.get("rejected"), "rejected")
    return _conversation_pair(prompt, [chosen], [rejected])


def openai(row) -> Pair:
    given = row.get("input")
    if not isinstance(given, dict):
        raise Skip(f"'input' is {_type(given)}, expected an object with 'messages'")
    prompt = messages(given, "messages")
    return _conversation_pair(prompt, messages(row, "preferred_output"), messages(row, "non_preferred_output"))


def alpaca_farm(row) -> Pair:
    prompt = text(row, "instruction") + (f"\n\n{row['input']}" if isinstance(row.get("input"), str) and row["input"] else "")
    first, second = text(row, "output_1"), text(row, "output_2")
    raw = row.get("preference")
    try:
        preference = float(raw)
    except (TypeError, ValueError):
        raise Skip(f"'preference' is {raw!r}, expected 1 or 2 (or a number between)") from None
    if preference == 0:  # alpaca_eval: neither output preferred
        raise NoPreference("tie (preference 0)")
    if not (1 <= preference <= 2) or math.isnan(preference):
        raise Skip(f"'preference' is {raw!r}, outside [1, 2]")
    if preference == 1.5:
        raise NoPreference("tie (preference 1.5)")
    chosen, rejected = (first, second) if preference < 1.5 else (second, first)
    note = "fractional preference: the side it leans to is kept as chosen" if preference not in (1, 2) else ""
    return Pair([{"role": "user", "content": prompt}], chosen, rejected, plain=(prompt, chosen, rejected), note=note)


def ultrafeedback_binarized(row) -> Pair:
    prompt = [{"role": "user", "content": text(row, "prompt")}]
    scores = row.get("score_chosen"), row.get("score_rejected")
    if all(isinstance(s, (int, float)) for s in scores) and scores[0] == scores[1]:
        raise NoPreference(f"tie (score_chosen = score_rejected = {scores[0]})")
    return _conversation_pair(prompt, messages(row, "chosen"), messages(row, "rejected"))


LAYOUTS = {  # name -> (columns every row needs, columns that may be absent, the mapping)
    "hh_rlhf": (("chosen", "rejected"), (), hh_rlhf),
    "prompt_chosen_rejected": (("prompt", "chosen", "rejected"), (), prompt_chosen_rejected),
    "conversational": (("chosen", "rejected"), ("prompt",), conversational),
    "sharegpt": (("conversations", "chosen", "rejected"), ("system",), sharegpt),
    "openai": (("input", "preferred_output", "non_preferred_output"), (), openai),
    "alpaca_farm": (("instruction", "output_1", "output_2", "preference"), ("input",), alpaca_farm),
    "ultrafeedback_binarized": (("prompt", "chosen", "rejected"), ("score_chosen", "score_rejected"), ultrafeedback_binarized),
}


if tuple(LAYOUTS) != DATASET_LAYOUTS:  # the params rule names them without importing this module (lm/config.py)
    raise ImportError(f"lm/config.py DATASET_LAYOUTS {DATASET_LAYOUTS} != lm/layouts.py LAYOUTS {tuple(LAYOUTS)}")


def suggest_layout(row: dict) -> str:
    """The layout a row's columns and value types look like ("" if none): for error messages only."""
    cols = set(row)
    if {"conversations", "chosen", "rejected"} <= cols:
        return "sharegpt"
    if {"input", "preferred_output", "non_preferred_output"} <= cols:
        return "openai"
    if {"instruction", "output_1", "output_2", "preference"} <= cols:
        return "alpaca_farm"
    if {"chosen", "rejected"} <= cols:
        lists = isinstance(row["chosen"], list)
        if "prompt" in cols:
            if lists and isinstance(row["prompt"], str):
                return "ultrafeedback_binarized"
            return "conversational" if lists else "prompt_chosen_rejected"
        if lists:
            return "conversational"
        return "hh_rlhf" if isinstance(row["chosen"], str) and ASSISTANT in row["chosen"] else ""
    return ""


def rename(row: dict, columns: dict) -> dict:
    """`columns` maps our column name to theirs: {"prompt": "question", "chosen": "response_j"}."""
    if not columns:
        return row
    out = {k: v for k, v in row.items() if k not in columns.values()}
    out.update({ours: row[theirs] for ours, theirs in columns.items() if theirs in row})
    return out


def _names(row: dict) -> str:
    return ", ".join(repr(c) for c in sorted(row, key=str)[:20]) or "none"


def check_columns(rows: list, layout: str, columns: dict, source: str, key: str):
    """Before any row is mapped, from the first rows [(where, row)]: the layout is set and known, and some row
    has its columns; else one line says what to set. (One odd row among good ones is a counted skip instead.)"""
    where, row = rows[0]
    if not layout:
        guess = suggest_layout(rename(row, columns))
        hint = f"its columns look like layout '{guess}': set {key}.layout: {guess}" if guess else \
            f"its columns ({_names(row)}) match no layout: map them with {key}.columns"
        raise LayoutError(f"{source}: {key}.layout is not set; {hint} (layouts: {', '.join(LAYOUTS)})")
    if layout not in LAYOUTS:
        close = difflib.get_close_matches(layout, LAYOUTS, n=1)
        raise LayoutError(f"{source}: unknown layout '{layout}'" + (f" (did you mean '{close[0]}'?)" if close else "") +
                          f"; known: {', '.join(LAYOUTS)}")
    for ours, theirs in (columns or {}).items():
        if not any(theirs in r for _, r in rows):
            raise LayoutError(f"{source} {where}: {key}.columns maps '{ours}' to '{theirs}', which is not a column "
                              f"(has: {_names(row)})")
    required = LAYOUTS[layout][0]
    if not any(all(c in rename(r, columns) for c in required) for _, r in rows):
        renamed = rename(row, columns)
        missing = [c for c in required if c not in renamed]
        guess = suggest_layout(renamed)
        raise LayoutError(f"{source} {where}: no column {', '.join(repr(c) for c in missing)} of layout '{layout}' "
                          f"(has: {_names(row)})" +
                          (f"; the columns look like layout '{guess}'" if guess and guess != layout else
                           f"; map yours with {key}.columns"))


def to_pair(row: dict, layout: str, columns: dict = None) -> Pair:
    """One row -> a Pair, or Skip with the reason (NoPreference for a tie)."""
    row = rename(row, columns)
    required, _, convert = LAYOUTS[layout]
    missing = [c for c in required if c not in row]
    if missing:
        raise Skip(f"missing column {', '.join(repr(c) for c in missing)}")
    pair = convert(row)
    if pair.chosen.strip() == pair.rejected.strip():
        raise NoPreference("chosen and rejected are identical")
    return pair


# --- rendering -----------------------------------------------------------------------------------------------
def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def template_adds_system_prompt(tokenizer) -> bool:
    """Whether the chat template writes a system turn into a conversation that has none (SmolLM2 and Qwen add
    their default one): rendered with and without a system message, the rest of the text agrees."""
    if not has_chat_template(tokenizer):
        return False
    user = [{"role": "user", "content": "\x01"}]
    try:
        bare = tokenizer.apply_chat_template(user, tokenize=False)
        marked = tokenizer.apply_chat_template([{"role": "system", "content": "\x02"}, *user], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses system turns (jinja raises its own errors)
        return False
    if not (isinstance(bare, str) and isinstance(marked, str) and "\x01" in bare and "\x01" in marked):
        return False
    before_user, bare_before_user = marked[: marked.index("\x01")], bare[: bare.index("\x01")]
    if "\x02" not in before_user:  # the template drops system messages
        return False
    header, between = before_user.split("\x02", 1)  # what opens a system turn, what closes it and opens the user's
    return (bare_before_user.startswith(header) and bare_before_user.endswith(between)
            and len(bare_before_user) > len(header) + len(between))  # some system text of its own in between


def plain_prompt(turns: list) -> str:
    return "".join(f"\n\n{PLAIN_NAMES[m['role']]}: {m['content']}" for m in turns) + ASSISTANT


def render(pair: Pair, tokenizer=None) -> tuple:
    """(prompt, chosen, rejected) as the models see them (module docstring)."""
    if has_chat_template(tokenizer):
        prompt = tokenizer.apply_chat_template(pair.messages, tokenize=False, add_generation_prompt=True)
        return prompt, pair.chosen, pair.rejected
    if pair.plain is not None:
        return pair.plain
    return plain_prompt(pair.messages), " " + pair.chosen, " " + pair.rejected
