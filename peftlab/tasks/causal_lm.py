"""Instruction SFT of a causal LM, evaluated by loss, perplexity and exact match of generated answers.

Training: the loss covers response tokens only (the data masks prompt and
padding with -100). The output layer is applied only at the positions that
predict a label: with a 262k-token vocabulary and short responses, computing
it for every token would be most of the step, and its logits most of the memory.

Evaluation: token NLL and perplexity over the responses, computed the same way;
then batched greedy decoding of each prompt (left padding, the KV cache,
stopping at EOS) and exact match of the final answer (the number after the
answer marker, else the last number). Generations are returned as rows
(prompt, output, target, prediction, correct) that the run folder keeps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.layout import GENERATIONS_DIR
from peftlab.tasks.base import Evaluation, Tally, Task, part_of


class CausalLM(Task):
    outputs_folder = GENERATIONS_DIR
    head = "causal_lm"
    peft_task_type = "CAUSAL_LM"  # what a PEFT adapter of this task declares
    metrics = ("exact_match", "loss", "perplexity")

    def __init__(self, metric: str = "exact_match", chat_template: bool = False, max_new_tokens: int = 64,
                 generation_batch_size: int = 16, answer_marker: str = "####", generate_on_validation: bool = True,
                 validation_generations: int | None = None):
        self.generate_on_validation = bool(generate_on_validation)
        super().__init__(metric)
        for option, value in (("max_new_tokens", max_new_tokens), ("generation_batch_size", generation_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"task.{option}={value} is not allowed: use an integer >= 1")
        self.chat_template = bool(chat_template)
        self.max_new_tokens, self.generation_batch_size = max_new_tokens, generation_batch_size
        self.answer_marker = str(answer_marker or "")  # empty: the answer is the generation's last number
        if validation_generations is not None and (isinstance(validation_generations, bool)
                                                   or not isinstance(validation_generations, int)
                                                   or validation_generations < 1):
            raise UserError(f"task.validation_generations={validation_generations} is not allowed: use an integer "
                            ">= 1 (validation examples generated per pass), or null for all of them")
        self.validation_generations = validation_generations

    def check_metric(self, metric: str) -> None:
        super().check_metric(metric)
        if metric == "exact_match" and not self.generate_on_validation:
            raise UserError("choosing on exact_match needs task.generate_on_validation=true "
                            "(or set trainer.metric=loss)")

    # -- data ---------------------------------------------------------------------
    def tokenize(self, raw: Any, tokenizer: Any, max_length: int) -> Any:
        from peftlab.data.sft_tokenize import tokenize_sft

        splits, self.data_report = tokenize_sft(raw, tokenizer, max_length, chat_template=self.chat_template)
        return splits

    def collator(self, tokenizer: Any):
        from peftlab.data.sft_tokenize import SFTCollator

        return SFTCollator(tokenizer)

    def check_model(self, model: nn.Module, name: str) -> None:
        from peftlab.models import architecture

        model_type = getattr(model.config, "model_type", "")
        if architecture(model_type).encoder:
            raise UserError(f"model '{name}' is a {model_type} encoder, not a causal language model: pick a decoder "
                            f"(e.g. model=gemma3-270m or model=tiny_lm), or a classification dataset")

    # -- training -----------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Any]:
        logits, targets = response_logits(model, batch)
        loss = nn.functional.cross_entropy(logits.float(), targets)
        return loss, _Outputs(loss=loss, logits=logits, targets=targets)

    # -- evaluation ---------------------------------------------------------------
    def measure(self, model: nn.Module, tokenizer: Any, split: Any, *, batch_size: int, device: Any, full: bool,
                part: tuple[int, int] = (0, 1)) -> Tally:
        tally = self._nll(model, tokenizer, part_of(split, part), batch_size, device)
        if full or self.generate_on_validation:
            shown = split if full or self.validation_generations is None else \
                split.select(range(min(int(self.validation_generations), len(split))))
            tally["rows"] = self._generate(model, tokenizer, part_of(shown, part), device)
        return tally

    def summarize(self, tally: Tally) -> Evaluation:
        from peftlab.evaluate_lm import loss_metrics

        metrics = loss_metrics(tally["nll_sum"], int(tally["tokens"]))
        if "rows" not in tally:
            return Evaluation(metrics)
        rows = tally["rows"]
        correct = sum(row["correct"] for row in rows)
        scores = {"exact_match": correct / len(rows) if rows else float("nan"), "generated": len(rows)}
        return Evaluation({**metrics, **scores}, rows)

    @torch.no_grad()
    def _nll(self, model: nn.Module, tokenizer: Any, split: Any, batch_size: int, device: Any) -> Tally:
        from peftlab.evaluate import by_length, make_loader

        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.long, device=device)
        for batch in make_loader(split, self.collator(tokenizer), batch_size, by_length(split, batch_size)):
            batch = {k: v.to(device) for k, v in batch.items()}
            logits, targets = response_logits(model, batch)
            total += nn.functional.cross_entropy(logits.float(), targets, reduction="sum").double()
            count += targets.numel()
        model.train(was_training)
        return {"nll_sum": float(total), "tokens": int(count)}  # the one host synchronisation of the pass

    def _generate(self, model: nn.Module, tokenizer: Any, split: Any, device: Any) -> list[dict]:
        from peftlab.evaluate_lm import generation_metrics

        if len(split) == 0:
            return []
        _, rows = generation_metrics(model, tokenizer, list(split["prompt_ids"]), list(split["answer"]), None,
                                     max_new_tokens=self.max_new_tokens, batch_size=self.generation_batch_size,
                                     marker=self.answer_marker)
        return rows


class _Outputs:
    """What a causal-LM step exposes to regularizers: the loss, and the logits at response positions."""

    def __init__(self, loss: Tensor, logits: Tensor, targets: Tensor):
        self.loss, self.logits, self.targets = loss, logits, targets


def response_logits(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Logits at the positions that predict a label (``labels`` != -100), and those labels.

    Position t predicts token t+1. The decoder runs on the whole sequence; the
    output layer only on the positions kept, followed by the model's own logit
    soft-capping when its config has one (Gemma 2).
    """
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, :-1][keep], targets[keep]
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = model.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep])
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, targets[keep]
