"""Tests for the SFT data: the built-in arithmetic set, load_sft and its presets (tokenizing: test_sft_tokenize)."""

from __future__ import annotations

import collections
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from omegaconf import OmegaConf

from peftlab.data import arith
from peftlab.data import generate_arith as gen
from peftlab.data.sft import load_sft, reference_answer
from peftlab.errors import UserError
from tests.conftest import one_line_error

SPLITS = ("train", "validation", "test")
REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "sft"
PRESETS = ("arith", "sft", "gsm8k", "metamathqa", "alpaca")
META_KEYS = ("defaults", "description", "_target_")
TASK_DEFAULT = [{"override /task@_global_.task": "causal_lm"}]

pytestmark = pytest.mark.usefixtures("datasets_cache_in_tmp")


@pytest.fixture(scope="module")
def records():
    return arith.read_records()


def preset_arguments(name: str, path: Path | None = None) -> dict:
    """The loader arguments a preset YAML gives (everything but the meta keys), ``path`` replaced."""
    node = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "dataset" / f"{name}.yaml"))
    arguments = {k: v for k, v in node.items() if k not in META_KEYS}
    if path is not None:
        arguments["path"] = str(path)
    return arguments


# ---------------------------------------------------------------- the built-in arithmetic set


def test_arith_has_3000_300_300_string_examples():
    splits = arith.load_arith()
    assert list(splits) == list(SPLITS)
    assert [splits[s].num_rows for s in SPLITS] == [3000, 300, 300]
    for split in SPLITS:
        assert splits[split].column_names == ["prompt", "response", "answer"]
        assert all(f == datasets.Value("string") for f in splits[split].features.values())


def test_arith_is_identical_on_reload_and_ignores_seed():
    first, again = arith.load_arith(), arith.load_arith(seed=123)
    for split in SPLITS:
        assert again[split].to_dict() == first[split].to_dict()


def test_arith_generator_reproduces_the_frozen_file(tmp_path):
    target = tmp_path / "arith.jsonl"
    subprocess.run(
        [sys.executable, "-m", "peftlab.data.generate_arith", "--output", str(target)],
        check=True, capture_output=True, cwd=REPO,
    )
    assert target.read_bytes() == arith.DATA_FILE.read_bytes()


def test_arith_counts_match_the_documented_table(records):
    counts = collections.Counter((r["split"], r["kind"]) for r in records)
    for split in SPLITS:
        row = [counts[split, kind] for kind in gen.KINDS]
        documented = next(line for line in arith.__doc__.splitlines() if line.strip().startswith(split + " "))
        assert documented.split()[1:] == [str(n) for n in row + [sum(row)]]


def test_arith_has_no_duplicate_problem_within_or_across_splits(records):
    prompts = [r["prompt"] for r in records]
    assert len(prompts) == len(set(prompts))
    facts = collections.defaultdict(set)
    for r in records:
        facts[r["kind"], tuple(r["numbers"])].add(r["split"])
    assert len(facts) == len(records), "the same operands appear twice"


# What each kind computes from its operands, in the order the prompt states them;
# written independently of the generator's own step functions.
EXPECTED = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "add_sub": lambda a, b, c: a + b - c,
    "mul_add": lambda a, b, c: a * b + c,
    "mul_sub": lambda a, b, c: a * b - c,
}


def test_arith_answers_are_correct_and_end_every_response(records):
    assert set(EXPECTED) == set(gen.KINDS)
    for r in records:
        # The operands are exactly the numbers the prompt states, in order.
        assert [int(n) for n in re.findall(r"\d+", r["prompt"])] == r["numbers"], r["prompt"]
        value = EXPECTED[r["kind"]](*r["numbers"])
        assert value == int(value) and 0 < value <= 300, r
        assert r["answer"] == str(int(value))
        *steps, last = r["response"].split("\n")
        assert last == f"#### {r['answer']}"
        for step in steps:  # every worked line is true arithmetic
            left, op, right, equals, result = step.split()
            assert equals == "=" and EXPECTED[{"+": "add", "-": "sub", "*": "mul", "/": "div"}[op]](
                int(left), int(right)
            ) == int(result), step
        assert reference_answer(r["response"], "####") == r["answer"]


def test_arith_every_kind_is_in_every_split_and_prompts_are_short(records, tokenizer):
    for split in SPLITS:
        assert {r["kind"] for r in records if r["split"] == split} == set(gen.KINDS)
    longest = max(len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in records)
    assert longest < 40


def test_arith_kinds_labels_each_prompt_with_its_operation_kind():
    kinds = arith.load_arith_kinds()
    records = arith.read_records()
    names = kinds["train"].features["label"].names
    assert len(names) == 7
    for split in ("train", "validation", "test"):
        expected = [(r["prompt"], r["kind"]) for r in records if r["split"] == split]
        got = [(row["text"], names[row["label"]]) for row in kinds[split]]
        assert got == expected


# ---------------------------------------------------------------- load_sft and the presets


def test_load_sft_carves_missing_splits_with_the_seed(tmp_path):
    splits = load_sft(FIXTURES / "gsm8k.jsonl", prompt_field="question", response_field="answer", seed=0)
    assert [splits[s].num_rows for s in SPLITS] == [8, 1, 1]
    again = load_sft(FIXTURES / "gsm8k.jsonl", prompt_field="question", response_field="answer", seed=0)
    other = load_sft(FIXTURES / "gsm8k.jsonl", prompt_field="question", response_field="answer", seed=3)
    assert again["test"]["prompt"] == splits["test"]["prompt"]
    assert [other[s]["prompt"] for s in SPLITS] != [splits[s]["prompt"] for s in SPLITS]
    everything = [p for s in SPLITS for p in splits[s]["prompt"]]
    assert len(everything) == len(set(everything)) == 10


def test_load_sft_reads_a_folder_of_split_files(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "gsm8k.jsonl").read_text().splitlines()]
    for name, part in (("train", rows[:6]), ("dev", rows[6:8]), ("test", rows[8:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    splits = load_sft(tmp_path, prompt_field="question", response_field="answer")
    assert [splits[s].num_rows for s in SPLITS] == [6, 2, 2]
    assert splits["validation"]["prompt"] == [r["question"] for r in rows[6:8]]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_yaml_selects_the_task_and_matches_its_loader(name):
    node = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "dataset" / f"{name}.yaml"))
    assert node["defaults"] == TASK_DEFAULT
    assert str(node["description"]).strip()
    module_name, _, function_name = node["_target_"].rpartition(".")
    loader = getattr(__import__(module_name, fromlist=[function_name]), function_name)
    parameters = set(inspect.signature(loader).parameters)
    assert set(preset_arguments(name)) <= parameters
    assert "seed" in parameters and "seed" not in node  # the run's seed is passed by the caller
    if node["_target_"].endswith("load_sft"):
        assert set(preset_arguments(name)) == parameters - {"seed"}, "every load_sft option is spelled out"


def test_preset_arith_loads_the_built_in_set():
    splits = arith.load_arith(**preset_arguments("arith"), seed=1)
    assert [splits[s].num_rows for s in SPLITS] == [3000, 300, 300]


@pytest.mark.parametrize(
    "name,answers",
    [
        ("gsm8k", {"12", "1580", "240", "15", "21", "48", "260", "750", "50", "45"}),
        ("metamathqa", {"4", "15", "12", "2000", "\\frac{3}{4}", "21", "(3,3)", "36", "10"}),
        ("alpaca", {""}),
    ],
)
def test_preset_loads_its_fixture(name, answers):
    splits = load_sft(**preset_arguments(name, FIXTURES / f"{name}.jsonl"), seed=0)
    assert list(splits) == list(SPLITS)
    for split in SPLITS:
        assert splits[split].column_names == ["prompt", "response", "answer"]
        assert splits[split].num_rows >= 1
    assert {a for s in SPLITS for a in splits[s]["answer"]} == answers
    assert sum(splits[s].num_rows for s in SPLITS) == 10


def test_preset_sft_reads_prompt_and_response_columns(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"r{i}\n#### {i}"}) + "\n" for i in range(20)))
    splits = load_sft(**preset_arguments("sft", data), seed=0)
    assert [splits[s].num_rows for s in SPLITS] == [16, 2, 2]
    row = splits["train"][0]
    assert row["response"].endswith(f"#### {row['answer']}") and row["prompt"] == f"q{row['answer']}"


def test_alpaca_input_follows_the_instruction_after_a_blank_line():
    splits = load_sft(**preset_arguments("alpaca", FIXTURES / "alpaca.jsonl"), seed=0)
    prompts = {p for s in SPLITS for p in splits[s]["prompt"]}
    assert "Translate the sentence into French.\n\nThe cat is on the table." in prompts
    assert "Name the capital of Japan." in prompts  # an empty input adds nothing


def test_answer_field_is_used_as_is():
    splits = load_sft(FIXTURES / "metamathqa.jsonl", prompt_field="query", answer_field="type", seed=0)
    assert {a for s in SPLITS for a in splits[s]["answer"]} <= {
        "MATH_AnsAug", "GSM_AnsAug", "MATH_Rephrased", "GSM_Rephrased", "MATH_SV", "GSM_SV", "MATH_FOBAR", "GSM_FOBAR"
    }


@pytest.mark.parametrize(
    "response,marker,answer",
    [
        ("18 + 54 = 72\n#### 72", "####", "72"),
        ("#### 1 \n#### 1,580", "####", "1580"),  # the last marker, thousands separators dropped
        ("so x = 3.\nThe answer is: (3,4)", "The answer is:", "(3,4)"),  # a pair keeps its comma
        ("#### 7\nthanks", "####", "7"),  # only the marker's line
        ("no marker here: 5", "####", ""),
        ("#### 5", None, ""),
    ],
)
def test_reference_answer(response, marker, answer):
    assert reference_answer(response, marker) == answer


def test_messages_keep_the_prompt_turns_and_the_last_assistant_reply_is_the_response():
    splits = load_sft(FIXTURES / "chat.jsonl", messages_field="messages", seed=0)
    rows = {r["response"]: r for s in SPLITS for r in splits[s]}
    assert splits["train"].column_names == ["prompt", "response", "answer", "messages"]
    system = rows["7 + 5 = 12\n#### 12"]
    assert system["messages"] == [
        {"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "What is 7 + 5?"},
    ]
    assert system["prompt"] == "You are a careful math tutor.\n\nWhat is 7 + 5?"
    assert system["answer"] == "12"
    multi = rows["3 * 7 = 21\n#### 21"]  # earlier turns, the first reply included, are prompt
    assert [t["role"] for t in multi["messages"]] == ["user", "assistant", "user"]
    assert "20 / 4 = 5\n#### 5" in rows  # a trailing user turn is dropped


# ---------------------------------------------------------------- bad input


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_prompt_column_names_it_the_columns_and_the_closest(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_sft(FIXTURES / "gsm8k.jsonl", prompt_field="questions", response_field="answer")
    message = one_line_error(excinfo)
    assert "dataset.prompt_field='questions'" in message
    assert "columns: question, answer" in message and "did you mean 'question'" in message


def test_missing_response_column_is_named():
    with pytest.raises(UserError) as excinfo:
        load_sft(FIXTURES / "alpaca.jsonl", prompt_field="instruction")
    assert "dataset.response_field='response'" in one_line_error(excinfo)


def test_missing_messages_column_is_named():
    with pytest.raises(UserError) as excinfo:
        load_sft(FIXTURES / "chat.jsonl", messages_field="conversation")
    message = one_line_error(excinfo)
    assert "dataset.messages_field='conversation'" in message and "messages" in message


@pytest.mark.parametrize(
    "cell,shown",
    [
        ("What is 2 + 2?", "'What is 2 + 2?'"),
        ([{"role": "user"}], "[{'role': 'user'}]"),
    ],
)
def test_messages_that_are_not_role_content_lists_name_the_row(tmp_path, cell, shown):
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    data = _write(tmp_path / "chat.jsonl", [{"messages": good}, {"messages": cell}])
    with pytest.raises(UserError) as excinfo:
        load_sft(data, messages_field="messages")
    message = one_line_error(excinfo)
    assert "dataset.messages_field='messages' row 2" in message and shown in message


def test_conversation_without_an_assistant_reply_is_a_user_error(tmp_path):
    data = _write(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UserError) as excinfo:
        load_sft(data, messages_field="messages")
    assert "row 1" in one_line_error(excinfo) and "'assistant'" in str(excinfo.value)


def test_empty_split_is_a_user_error(tmp_path):
    _write(tmp_path / "train.jsonl", [{"prompt": "p", "response": "r"}] * 5)
    (tmp_path / "validation.jsonl").write_text("")
    with pytest.raises(UserError) as excinfo:
        load_sft(tmp_path)
    message = one_line_error(excinfo)
    assert "'validation'" in message and "empty" in message


def test_null_prompt_is_a_user_error(tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": None, "response": "r"}])
    with pytest.raises(UserError) as excinfo:
        load_sft(data)
    assert "dataset.prompt_field='prompt' has 1 null values" in one_line_error(excinfo)


def test_input_field_with_messages_is_a_user_error():
    with pytest.raises(UserError) as excinfo:
        load_sft(FIXTURES / "chat.jsonl", messages_field="messages", input_field="input")
    assert "dataset.input_field='input'" in one_line_error(excinfo)
