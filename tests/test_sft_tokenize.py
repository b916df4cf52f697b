"""tokenize_sft, chat templates and SFTCollator: what the causal-LM loss learns from, on the real MiniLM tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path

import datasets
import pytest
import torch

from peftlab.data import arith
from peftlab.data.sft import load_sft
from peftlab.data.sft_tokenize import IGNORE_INDEX, SFTCollator, fit_example, sft_cache_key, tokenize_sft
from peftlab.errors import UserError
from tests.conftest import one_line_error

SPLITS = ("train", "validation", "test")
FIXTURES = Path(__file__).parent / "fixtures" / "sft"
# A minimal chat template: "<role> content" lines, and "<assistant> " to prompt a reply.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)

pytestmark = pytest.mark.usefixtures("datasets_cache_in_tmp")


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    return chat


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
