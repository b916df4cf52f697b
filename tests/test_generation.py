"""Greedy generation and the causal-LM metrics, on tiny random causal LMs.

The models are seeded, in float64 (so a padded batch and a lone prompt cannot
differ in an argmax through rounding), with a large initialisation and untied
output embeddings so that greedy decoding neither ties nor repeats one token.
The Gemma 3 model has a sliding window of 4 on one layer, shorter than the
prompts plus their generations, so its cache drops keys while decoding.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from peftlab.evaluate_lm import generation_metrics, lm_loss, stop_token_ids, write_generations
from peftlab.generation import generate

VOCAB = 1000
NEW_TOKENS = 12
PROMPT_LENGTHS = [5, 1, 9, 3, 12, 7, 2]  # unsorted, so batching by length reorders them


def tiny_llama(attn: str = "sdpa", dtype: torch.dtype = torch.float64) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.5, tie_word_embeddings=False, attn_implementation=attn)
    return LlamaForCausalLM(config).to(dtype).eval()


def tiny_gemma3(attn: str = "sdpa", dtype: torch.dtype = torch.float64) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Gemma3TextConfig"):
        pytest.skip("this transformers has no Gemma 3")
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], initializer_range=0.2,
        tie_word_embeddings=False, attn_implementation=attn)
    return transformers.Gemma3ForCausalLM(config).to(dtype).eval()


def make_prompts(lengths=PROMPT_LENGTHS, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]


@torch.no_grad()
def greedy_without_cache(model: nn.Module, prompt: list[int], new_tokens: int) -> tuple[list[int], float]:
    """The reference: re-run the whole sequence each step, argmax of the last position.

    Also returns the smallest gap between the best and second-best logit, the
    margin by which the test model's choices are unambiguous.
    """
    ids, out, margin = list(prompt), [], math.inf
    for _ in range(new_tokens):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        top = logits.topk(2).values
        margin = min(margin, float(top[0] - top[1]))
        ids.append(int(logits.argmax()))
        out.append(ids[-1])
    return out, margin


class Lab:
    """A test model, its prompts and their reference continuations."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.prompts = make_prompts()
        self.references = [greedy_without_cache(model, p, NEW_TOKENS)[0] for p in self.prompts]

    def generate(self, prompts=None, **kwargs):
        options = dict(max_new_tokens=NEW_TOKENS, eos_token_ids=[], pad_token_id=0, batch_size=16)
        return generate(self.model, self.prompts if prompts is None else prompts, **{**options, **kwargs})


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def lab(request) -> Lab:
    return Lab(tiny_llama() if request.param == "llama" else tiny_gemma3())


@contextlib.contextmanager
def counting_forwards(model: nn.Module) -> Iterator[list[int]]:
    """The calls of the model's forward inside the block, one list item each."""
    calls: list[int] = []
    hook = model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        yield calls
    finally:
        hook.remove()


def first_new_token_at(tokens: list[int], min_step: int = 1) -> int:
    """The first step >= min_step whose token does not occur earlier in ``tokens``."""
    return next(k for k in range(min_step, len(tokens)) if tokens[k] not in tokens[:k])


# --------------------------------------------------------------------------- generation


def test_the_test_models_decode_varied_tokens_without_near_ties(lab):
    # Guards the other tests' meaning: a model that repeats one token would prove little.
    assert all(len(set(tokens)) >= NEW_TOKENS // 2 for tokens in lab.references)
    margins = [greedy_without_cache(lab.model, p, NEW_TOKENS)[1] for p in lab.prompts[:2]]
    assert min(margins) > 1e-6


def test_cached_decoding_equals_recomputing_the_whole_sequence(lab):
    assert lab.generate(batch_size=1) == lab.references


@pytest.mark.parametrize("batch_size", [2, 3, len(PROMPT_LENGTHS)])
def test_a_left_padded_batch_equals_each_prompt_alone(lab, batch_size):
    alone = lab.generate(batch_size=1)
    assert lab.generate(batch_size=batch_size) == alone


def test_left_padding_with_eager_attention_in_float32():
    # float32: in float64 the eager path of this transformers casts the padding mask's
    # minimum to -inf and a fully padded row becomes NaN (refused, see the NaN test).
    model = tiny_llama(attn="eager", dtype=torch.float32)
    prompts = make_prompts()
    options = dict(max_new_tokens=NEW_TOKENS, eos_token_ids=[], pad_token_id=0)
    assert min(greedy_without_cache(model, p, NEW_TOKENS)[1] for p in prompts) > 1e-4  # no near-ties
    assert generate(model, prompts, batch_size=len(prompts), **options) == generate(model, prompts, batch_size=1,
                                                                                    **options)


def test_a_sequence_stops_at_its_eos_while_the_others_continue(lab):
    step = first_new_token_at(lab.references[0], min_step=2)
    eos = lab.references[0][step]
    out = lab.generate(eos_token_ids={eos}, pad_token_id=eos)  # pad == eos, as many tokenizers have it
    expected = [tokens[:tokens.index(eos)] if eos in tokens else tokens for tokens in lab.references]
    assert out[0] == lab.references[0][:step]
    assert out == expected
    assert max(len(tokens) for tokens in out) > step  # the others went on past the stop


def test_a_finished_sequence_is_fed_the_pad_token(lab):
    step = first_new_token_at(lab.references[0], min_step=2)
    eos, pad = lab.references[0][step], 0
    fed: list[list[int]] = []  # the last input column of each call

    def record(module, args, kwargs):
        fed.append(kwargs["input_ids"][:, -1].tolist())

    hook = lab.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        lab.generate(lab.prompts[:1] + lab.prompts[4:5], eos_token_ids=[eos], pad_token_id=pad)
    finally:
        hook.remove()
    # fed[0] is the prompts' call; fed[k + 1] carries the token chosen at step k.
    assert [tokens[0] for tokens in fed[1:step + 2]] == lab.references[0][:step + 1]
    assert all(tokens[0] == pad for tokens in fed[step + 2:]) and len(fed) > step + 2


def test_a_pad_token_the_model_emits_is_kept(lab):
    pad = lab.references[0][0]
    assert lab.generate(pad_token_id=pad, batch_size=len(lab.prompts)) == lab.references


def test_the_batch_stops_once_every_sequence_has_stopped(lab):
    prompt = lab.prompts[0]
    step = first_new_token_at(lab.references[0], min_step=2)
    with counting_forwards(lab.model) as calls:
        out = lab.generate([prompt], eos_token_ids=[lab.references[0][step]])
    assert out == [lab.references[0][:step]]
    assert len(calls) == step + 1  # the prompt, then one call per token up to the EOS


def test_max_new_tokens_is_respected(lab):
    with counting_forwards(lab.model) as calls:
        out = lab.generate(max_new_tokens=5)
    assert out == [tokens[:5] for tokens in lab.references]
    assert len(calls) == 5  # one batch: the prompt's call gives the first token, no wasted last call
    with counting_forwards(lab.model) as calls:
        assert lab.generate(max_new_tokens=0) == [[] for _ in lab.prompts]
    assert not calls


def test_greedy_generation_matches_the_models_own_generate(lab):
    eos = lab.references[0][first_new_token_at(lab.references[0], min_step=3)]
    ours = lab.generate(eos_token_ids=[eos], pad_token_id=0)
    for prompt, tokens in zip(lab.prompts, ours):
        ids = torch.tensor([prompt])
        theirs = lab.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                    do_sample=False, eos_token_id=eos, pad_token_id=0)[0, len(prompt):].tolist()
        assert tokens == (theirs[:theirs.index(eos)] if eos in theirs else theirs)


def test_the_models_mode_is_restored_and_eval_during_the_call(lab):
    model = lab.model
    seen: list[bool] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        model.train()
        model.model.layers[0].eval()  # a mixed state comes back as it was
        lab.generate(lab.prompts[:2], max_new_tokens=2)
        assert seen and not any(seen)
        assert model.training and not model.model.layers[0].training and model.model.layers[1].training
        model.eval()
        lab.generate(lab.prompts[:2], max_new_tokens=2)
        assert not any(m.training for m in model.modules())
    finally:
        hook.remove()
        model.eval()


def test_an_adapted_model_generates_like_its_reference_in_train_mode_with_dropout():
    from peftlab.methods.lora import LoRA

    model = tiny_llama()
    LoRA(rank=4, dropout=0.5, target_modules=["q_proj", "v_proj", "down_proj"]).prepare(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a non-zero update, so the adapters change the function
    prompts = make_prompts(PROMPT_LENGTHS[:4])
    references = [greedy_without_cache(model, p, NEW_TOKENS)[0] for p in prompts]
    model.train()  # dropout would change the tokens if generation did not switch to eval
    out = generate(model, prompts, max_new_tokens=NEW_TOKENS, eos_token_ids=[], pad_token_id=0, batch_size=4)
    assert out == references and model.training


def test_nan_logits_are_refused_and_the_mode_restored():
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[7] = float("nan")
    model.train()
    with pytest.raises(FloatingPointError, match="NaN"):
        generate(model, make_prompts(), max_new_tokens=3, eos_token_ids=[], pad_token_id=0)
    assert model.training


def test_empty_prompts_and_bad_sizes_are_refused(lab):
    with pytest.raises(ValueError, match="empty"):
        lab.generate([[5], []])
    with pytest.raises(ValueError, match="batch_size"):
        lab.generate(batch_size=0)
    assert lab.generate([]) == []


# --------------------------------------------------------------------------- lm_loss


def sft_example(prompt_len: int, response_len: int, seed: int) -> dict[str, list[int]]:
    """An instruction example: the loss is on the response tokens only."""
    ids = make_prompts([prompt_len + response_len], seed=seed)[0]
    return {"input_ids": ids, "labels": [-100] * prompt_len + ids[prompt_len:]}


def collate(examples: list[dict[str, list[int]]], side: str = "right") -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in examples:
        pad = width - len(e["input_ids"])
        rows = (e["input_ids"], [1] * len(e["input_ids"]), e["labels"])
        fills = (0, 0, -100)
        for key, row, fill in zip(batch, rows, fills):
            batch[key].append([fill] * pad + row if side == "left" else row + [fill] * pad)
    return {key: torch.tensor(value) for key, value in batch.items()}


@torch.no_grad()
def nll_by_hand(model: nn.Module, example: dict[str, list[int]]) -> tuple[float, int]:
    """Sum of -log p(label[t+1] | tokens <= t) over the scored positions, one unpadded example."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([example["input_ids"]])).logits[0], dim=-1)
    scored = [t for t in range(1, len(example["labels"])) if example["labels"][t] != -100]
    return sum(-float(logp[t - 1, example["labels"][t]]) for t in scored), len(scored)


EXAMPLES = [sft_example(4, 3, 10), sft_example(1, 5, 11), sft_example(7, 1, 12), sft_example(2, 2, 13)]


@pytest.mark.parametrize("side", ["right", "left"])
def test_lm_loss_equals_a_hand_computation_over_scored_tokens(side):
    model = tiny_llama()
    loader = [collate(EXAMPLES[:3], side), collate(EXAMPLES[3:], side)]
    sums, counts = zip(*(nll_by_hand(model, e) for e in EXAMPLES))
    result = lm_loss(model, loader)
    assert result["tokens"] == sum(counts) == 3 + 5 + 1 + 2
    assert result["loss"] == pytest.approx(sum(sums) / sum(counts), rel=1e-10)
    assert result["perplexity"] == pytest.approx(math.exp(sum(sums) / sum(counts)), rel=1e-10)


def test_lm_loss_counts_a_position_exactly_when_its_label_is_not_ignored():
    model = tiny_llama()
    masked = EXAMPLES[0]
    unmasked = {**masked, "labels": list(masked["labels"])}
    unmasked["labels"][3] = masked["input_ids"][3]  # score one more prompt token
    with_one = lm_loss(model, [collate([unmasked])])
    without = lm_loss(model, [collate([masked])])
    logp = torch.log_softmax(model(input_ids=torch.tensor([masked["input_ids"]])).logits[0].detach(), -1)
    added = -float(logp[2, masked["input_ids"][3]])
    assert with_one["tokens"] == without["tokens"] + 1
    assert with_one["loss"] * with_one["tokens"] == pytest.approx(without["loss"] * without["tokens"] + added,
                                                                  rel=1e-10)


def test_lm_loss_restores_the_mode_and_reports_nothing_scored_as_nan():
    model = tiny_llama().train()
    nothing = {"input_ids": [5, 6], "labels": [-100, -100]}
    result = lm_loss(model, [collate([nothing])])
    assert result["tokens"] == 0 and math.isnan(result["loss"]) and math.isnan(result["perplexity"])
    assert model.training


# --------------------------------------------------------------------------- generation metrics


class NumberTokenizer:
    """Decodes each id as its decimal number, space separated; 0-2 are special (pad, bos, eos)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    all_special_ids = [0, 1, 2]

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i in self.all_special_ids))


def test_generation_metrics_score_exact_match_and_return_one_row_per_prompt(tmp_path):
    model = tiny_llama()
    tokenizer = NumberTokenizer()
    prompts = [[tokenizer.bos_token_id] + p for p in make_prompts()]
    outputs = generate(model, prompts, max_new_tokens=6, eos_token_ids=[2], pad_token_id=0)
    decoded = [tokenizer.decode(out, skip_special_tokens=True) for out in outputs]
    # Without a marker the last number is the answer: right for even rows, wrong for odd ones.
    answers = [text.split()[-1] if i % 2 == 0 else "-1" for i, text in enumerate(decoded)]
    metrics, rows = generation_metrics(model, tokenizer, prompts, answers, None, max_new_tokens=6, batch_size=3)
    assert metrics == {"exact_match": pytest.approx(4 / 7), "generated": 7}
    assert [set(row) for row in rows] == [{"prompt", "output", "target", "prediction", "correct"}] * 7
    assert [row["correct"] for row in rows] == [i % 2 == 0 for i in range(7)]
    assert rows[0]["prompt"] == tokenizer.decode(prompts[0])  # with its bos: the prompt as the model saw it
    assert [row["output"] for row in rows] == decoded and [row["target"] for row in rows] == answers
    assert rows[1]["prediction"] == decoded[1].split()[-1]


def test_generation_metrics_use_given_prompt_texts_and_handle_no_prompts():
    model = tiny_llama()
    texts = ["What is 2 + 2?", "And 3 + 3?"]
    _, rows = generation_metrics(model, NumberTokenizer(), make_prompts([3, 4]), ["4", "6"], texts,
                                 max_new_tokens=2, batch_size=2)
    assert [row["prompt"] for row in rows] == texts
    metrics, rows = generation_metrics(model, NumberTokenizer(), [], [], None, max_new_tokens=2, batch_size=2)
    assert math.isnan(metrics["exact_match"]) and metrics["generated"] == 0 and rows == []
    with pytest.raises(ValueError, match="answers"):
        generation_metrics(model, NumberTokenizer(), [[5]], [], None, max_new_tokens=2, batch_size=2)


def test_generation_stops_at_the_tokenizers_and_the_models_end_tokens():
    model = tiny_llama()
    model.generation_config.eos_token_id = [2, 106]  # a chat model's end-of-turn besides its eos
    assert stop_token_ids(model, NumberTokenizer()) == {2, 106}


def test_generations_are_written_as_strict_json_lines(tmp_path):
    rows = [
        {"prompt": "line one\nline two", "output": "caf\u00e9 \u2212 #### 3", "target": "3", "prediction": "3",
         "correct": True},
        {"prompt": "p", "output": "", "target": "", "prediction": None, "correct": False, "score": float("nan")},
    ]
    path = tmp_path / "gen" / "generations.jsonl"
    write_generations(rows, path)

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    lines = path.read_text(encoding="utf-8").splitlines()
    parsed = [json.loads(line, parse_constant=refuse) for line in lines]
    assert len(lines) == 2 and parsed[0] == rows[0] and parsed[1]["score"] is None
    assert [p.name for p in path.parent.iterdir()] == ["generations.jsonl"]  # no temporary file left
