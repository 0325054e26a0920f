"""Tokenizers behind one small interface.

``SentencePieceTokenizer`` reads a local ``.model`` file (the default is the
Mistral 7B v0.1 vocabulary, Llama 2's format, shipped in the ``mistral-common``
wheel). ``HuggingFaceTokenizer`` loads with ``AutoTokenizer`` from a local
directory or, where a hub is reachable, a hub name.
"""

from __future__ import annotations

import abc
import dataclasses
import functools

from xlafw.arguments import text
from xlafw.data import files


class Tokenizer(abc.ABC):
    """Text to token ids."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int:
        """End-of-document id, put between packed documents."""

    @property
    def pad_id(self) -> int:
        """Id used for padding (never a loss target)."""
        return self.eos_id

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id SFT examples start with; None if there is none."""
        return None

    @abc.abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Tokenizes texts without special tokens."""


@dataclasses.dataclass(frozen=True)
class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model file.

    Attributes:
      model_file: path to the ``.model`` file; ``pkg:`` paths allowed.
    """

    model_file: str = "pkg:mistral_common/data/tokenizer.model.v1"

    def __post_init__(self):
        if problem := text(
            "model_file",
            self.model_file,
            fix="a sentencepiece .model file (pkg:PACKAGE/PATH for one inside a package).",
        ):
            raise problem

    @functools.cached_property
    def _processor(self):
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_file=files.resolve_one(self.model_file))

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @property
    def eos_id(self) -> int:
        return self._processor.eos_id()

    @property
    def bos_id(self) -> int | None:
        bos = self._processor.bos_id()
        return None if bos < 0 else bos

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._processor.encode(texts)


@dataclasses.dataclass(frozen=True)
class HuggingFaceTokenizer(Tokenizer):
    """A tokenizer ``transformers.AutoTokenizer`` can load.

    Attributes:
      name_or_path: a local directory with ``tokenizer.json``, or a hub name
        (needs a reachable hub; gated models need ``HF_TOKEN``).
    """

    name_or_path: str

    def __post_init__(self):
        if problem := text(
            "name_or_path",
            self.name_or_path,
            fix="a hub name such as 'meta-llama/Llama-3.1-8B', or a local tokenizer directory.",
        ):
            raise problem

    @functools.cached_property
    def _tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.name_or_path)

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    @property
    def eos_id(self) -> int:
        return self._tokenizer.eos_token_id

    @property
    def bos_id(self) -> int | None:
        return self._tokenizer.bos_token_id

    @property
    def pad_id(self) -> int:
        pad = self._tokenizer.pad_token_id
        return self.eos_id if pad is None else pad

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._tokenizer(texts, add_special_tokens=False)["input_ids"]
