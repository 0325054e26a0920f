"""Collators: rows or examples -> the fixed-shape batch dict the model takes.

Every batch is ``[host_batch, seq_len]`` whatever its content, so the train step
compiles once. Labels are aligned with ``input_ids`` (the model shifts them);
-100 marks a position that is never a loss target.

Causal LM (``causal_lm_batch``): packed rows, labels = input ids. Keys:
``input_ids``, ``labels``, and with ``DocumentBoundaries.SEGMENTED`` also
``segment_ids`` and ``position_ids``.

SFT (``SftEncoder`` + ``sft_batch``): one example per row, loss only on the
completion or the assistant turns, EOS after each of them, padded to
``seq_len`` (never to the batch's longest, which would recompile). Keys:
``input_ids``, ``labels`` (-100 on prompt and pad positions), ``attention_mask``
(0 on pads).

Chat template (``ChatMessages``), rendered as plain text, no hub template::

    <|system|>\\n{content}\\n          (no loss)
    <|user|>\\n{content}\\n            (no loss)
    <|assistant|>\\n                   (no loss)
    {content}<EOS>                     (loss: the content and its EOS)
    \\n                                (no loss, before the next turn)

The markers are ordinary text to the tokenizer (no added special tokens), so any
tokenizer works. Each span is tokenized separately so the loss boundary falls
exactly between spans; a completion therefore needs no leading space.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from xlafw.arguments import raise_invalid, text, texts
from xlafw.data.packing import PackedRow
from xlafw.data.tokenizers import Tokenizer

IGNORE = -100


class DocumentBoundaries(enum.Enum):
    """What a packed batch says about where its documents start.

    Attributes:
      IGNORED: rows are plain token streams; attention crosses documents (the
        classic GPT packing). Keys: ``input_ids``, ``labels``.
      SEGMENTED: rows also carry ``segment_ids`` and per-document
        ``position_ids``, so attention stops at document boundaries.
    """

    IGNORED = "ignored"
    SEGMENTED = "segmented"


def causal_lm_batch(
    rows: Sequence[PackedRow], boundaries: DocumentBoundaries = DocumentBoundaries.IGNORED
) -> dict[str, torch.Tensor]:
    """Stacks packed rows into a causal-LM batch (labels = input ids, no pads)."""
    ids = torch.from_numpy(np.stack([r.input_ids for r in rows]))
    batch = {"input_ids": ids, "labels": ids.clone()}
    if boundaries is DocumentBoundaries.SEGMENTED:
        batch["segment_ids"] = torch.from_numpy(np.stack([r.segment_ids for r in rows]))
        batch["position_ids"] = torch.from_numpy(np.stack([r.position_ids for r in rows]))
    return batch


@dataclasses.dataclass(frozen=True)
class Span:
    """A piece of an SFT example's text.

    Attributes:
      text: the text.
      loss: True for what the model learns to produce (it is then followed by EOS).
    """

    text: str
    loss: bool


@dataclasses.dataclass(frozen=True)
class PromptCompletion:
    """Records with a prompt and a completion; loss on the completion and its EOS.

    Attributes:
      prompt_field: the record's prompt column.
      completion_field: the record's completion column.
    """

    prompt_field: str = "prompt"
    completion_field: str = "completion"

    def __post_init__(self):
        raise_invalid(
            text("prompt_field", self.prompt_field, fix="the record's prompt column."),
            text("completion_field", self.completion_field, fix="the record's completion column."),
        )

    def spans(self, record: dict[str, Any]) -> list[Span]:
        return [
            Span(record[self.prompt_field], loss=False),
            Span(record[self.completion_field], loss=True),
        ]


@dataclasses.dataclass(frozen=True)
class ChatMessages:
    """Records with a list of ``{"role", "content"}`` messages (see the module template).

    Attributes:
      messages_field: the record's messages column.
      loss_roles: roles whose content is trained on.
    """

    messages_field: str = "messages"
    loss_roles: tuple[str, ...] = ("assistant",)

    def __post_init__(self):
        raise_invalid(
            text("messages_field", self.messages_field, fix="the record's messages column."),
            texts(
                "loss_roles",
                self.loss_roles,
                allow_empty=False,
                fix="the roles to train on, e.g. ('assistant',).",
            ),
        )

    def spans(self, record: dict[str, Any]) -> list[Span]:
        spans: list[Span] = []
        for message in record[self.messages_field]:
            role, content = message["role"], message["content"]
            # A trained turn ends with EOS, not a newline; the next header adds it.
            separator = "\n" if spans and spans[-1].loss else ""
            if role in self.loss_roles:
                spans += [Span(f"{separator}<|{role}|>\n", False), Span(content, True)]
            else:
                spans.append(Span(f"{separator}<|{role}|>\n{content}\n", False))
        return spans


class Truncation(enum.Enum):
    """What happens to an SFT example longer than ``seq_len``.

    Attributes:
      RIGHT: keep its first ``seq_len`` tokens.
      DROP: skip it.
    """

    RIGHT = "right"
    DROP = "drop"


@dataclasses.dataclass(frozen=True)
class SftExample:
    """One tokenized SFT example, at most ``seq_len`` long.

    Attributes:
      input_ids: the ids.
      labels: the ids where trained on, -100 elsewhere.
    """

    input_ids: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class SftEncoder:
    """Spans -> ``SftExample``: tokenizes, appends EOS, masks, truncates.

    Attributes:
      tokenizer: turns text into ids.
      seq_len: the row length.
      truncation: what to do with an example longer than ``seq_len``.
      add_bos: start every example with the tokenizer's BOS (if it has one),
        as Llama and Mistral chat models expect.
    """

    tokenizer: Tokenizer
    seq_len: int
    truncation: Truncation = Truncation.RIGHT
    add_bos: bool = True

    def encode(self, spans: Sequence[Span]) -> SftExample | None:
        """Returns the example, or None when it is dropped.

        An example is dropped when it is too long under ``Truncation.DROP``, and
        always when no loss token is left after truncation (a row without a
        target would make the mean loss 0/0).
        """
        ids_per_span = self.tokenizer.encode_batch([s.text for s in spans])
        bos = self.tokenizer.bos_id if self.add_bos else None
        ids, labels = ([bos], [IGNORE]) if bos is not None else ([], [])
        for span, span_ids in zip(spans, ids_per_span, strict=True):
            if span.loss:
                span_ids = [*span_ids, self.tokenizer.eos_id]
            ids += span_ids
            labels += span_ids if span.loss else [IGNORE] * len(span_ids)
        if len(ids) > self.seq_len:
            if self.truncation is Truncation.DROP:
                return None
            ids, labels = ids[: self.seq_len], labels[: self.seq_len]
        if all(label == IGNORE for label in labels[1:]):  # position 0 is never a target
            return None
        return SftExample(np.asarray(ids, np.int64), np.asarray(labels, np.int64))


def sft_batch(examples: Sequence[SftExample], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Pads examples on the right to exactly ``seq_len`` and stacks them."""
    shape = (len(examples), seq_len)
    ids = np.full(shape, pad_id, np.int64)
    labels = np.full(shape, IGNORE, np.int64)
    mask = np.zeros(shape, np.int64)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n], labels[row, :n], mask[row, :n] = example.input_ids, example.labels, 1
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
    }
