"""Write ``peftlab/assets/tiny_lm/``: a tiny Llama-style causal LM folder (config + tokenizer, no weights).

    python -m peftlab.assets.generate_tiny_lm            # regenerate the shipped folder
    python -m peftlab.assets.generate_tiny_lm --out DIR  # write it elsewhere

The output is deterministic: the same code writes the same bytes, so the
shipped folder can be checked against a fresh generation.

The tokenizer is a byte-level BPE (any text encodes, ``decode(encode(s)) == s``)
trained on the training split of the built-in docstrings plus generated
arithmetic word problems. Every digit is its own token: a number is spelled the
same way wherever it appears, so ``12``, ``120`` and ``312`` share their digits
and an answer is right or wrong one digit at a time, instead of depending on
which digit groups the merges happened to learn.

Special tokens use the ids of the Gemma family (``<pad>`` 0, ``<eos>`` 1,
``<bos>`` 2, ``<unk>`` 3). ``tokenizer(text)`` starts with ``<bos>`` and adds no
``<eos>``: the post-processor in tokenizer.json does this, so transformers and
the raw ``tokenizers`` library agree. tokenizer_config.json says the same
(``add_bos_token: true``, ``add_eos_token: false``), but recent transformers
ignore those flags when tokenizer.json exists (``tokenizer.add_bos_token`` then
reads False although ``<bos>`` is added): check ``input_ids[0]`` instead. The
chat template writes ``<bos>`` itself, since ``apply_chat_template`` tokenizes
without special tokens. It starts each turn with a ``System:``, ``User:`` or
``Assistant:`` line and ends an assistant turn with ``<eos>`` (a newline
follows only when another turn does, so a conversation ends with ``<eos>``);
``add_generation_prompt`` ends the prompt with ``Assistant:`` and a newline, so
a rendered prompt is an exact prefix of the rendered conversation answering it::

    <bos>User:
    What is 12 + 7?
    Assistant:
    12 + 7 = 19
    #### 19<eos>
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

VOCAB_SIZE = 2000
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, in this order
MAX_POSITIONS = 512
ARITHMETIC_SAMPLES = 2000
CHAT_SAMPLES = 500
SEED = 0

# Newlines are written as {{ '\n' }}: transformers renders with trim_blocks, which drops a
# newline that follows a tag. An assistant turn ends with <eos> and nothing after it when it is
# the last turn, so a training conversation ends with the token generation stops at.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('chat roles are system, user and assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{{ message['role'] | capitalize }}:{{ '\\n' }}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{{ '\\n' }}{% endif %}"
)

_NAMES = ("Tom", "Ana", "Lee", "Maya", "Omar", "Sara", "Ivan", "Lena", "Noah", "Zoe", "Ravi", "Kim")
_ITEMS = ("apples", "books", "coins", "pens", "cards", "eggs", "shells", "stamps", "marbles", "cookies")


def default_output() -> Path:
    return Path(__file__).resolve().parent / "tiny_lm"


# ---------------------------------------------------------------- training text


def docstrings() -> Iterator[str]:
    """The training split of the built-in dataset (the test split never shapes the vocabulary)."""
    text = files("peftlab.data").joinpath("stdlib_docs.jsonl").read_text(encoding="utf-8")
    for line in text.splitlines():
        row = json.loads(line)
        if row["split"] == "train":
            yield row["text"]


def word_problem(rng: random.Random) -> tuple[str, str]:
    """One question and its worked answer (``a op b = c`` then ``#### c``)."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.choice(("add", "sub", "mul"))
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    if kind == "add":
        question = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        equation, result = f"{a} + {b} = {a + b}", a + b
    elif kind == "sub":
        a, b = max(a, b), min(a, b)
        question = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        equation, result = f"{a} - {b} = {a - b}", a - b
    else:
        a, b = a % 12 + 1, b % 12 + 1
        question = f"{name} buys {a} boxes with {b} {item} each. How many {item} is that?"
        equation, result = f"{a} x {b} = {a * b}", a * b
    return question, f"{equation}\n#### {result}"


def arithmetic_texts(seed: int = SEED) -> Iterator[str]:
    """Word problems as plain text, then as chat turns, so the markers become tokens too."""
    rng = random.Random(seed)
    for _ in range(ARITHMETIC_SAMPLES):
        question, answer = word_problem(rng)
        yield f"{question}\n{answer}"
    for _ in range(CHAT_SAMPLES):
        question, answer = word_problem(rng)
        yield f"User:\n{question}\nAssistant:\n{answer}"


def training_texts() -> list[str]:
    return [*docstrings(), *arithmetic_texts()]


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str]):
    """A byte-level BPE with one token per digit and ``<bos>`` prepended on encode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tokenizer.token_to_id("<bos>")
    # The same templates transformers builds from add_bos_token, so both agree.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", bos_id)]
    )
    return tokenizer


def tokenizer_config(tokenizer) -> dict:
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        # Cleaning would rewrite " ." and " ," on decode and break exact round trips.
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }


# ---------------------------------------------------------------- model config


def model_config(tokenizer) -> dict:
    """A Llama decoder small enough to build in milliseconds; the vocabulary is the tokenizer's."""
    token_id = tokenizer.token_to_id
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tokenizer.get_vocab_size(),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": MAX_POSITIONS,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "bos_token_id": token_id("<bos>"),
        "eos_token_id": token_id("<eos>"),
        "pad_token_id": token_id("<pad>"),
        "use_cache": True,
    }


# ---------------------------------------------------------------- output


def _json_text(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def generate(out: Path) -> Path:
    """Write config.json, tokenizer.json and tokenizer_config.json into ``out``."""
    tokenizer = train_tokenizer(training_texts())
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(_json_text(tokenizer_config(tokenizer)), encoding="utf-8")
    (out / "config.json").write_text(_json_text(model_config(tokenizer)), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the tiny causal LM folder (config + tokenizer).")
    parser.add_argument("--out", type=Path, default=default_output(), help="folder to write (default: the shipped one)")
    args = parser.parse_args(argv)
    out = generate(args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
