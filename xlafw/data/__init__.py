"""Data: sources, mixtures, tokenizers, packing, collators and the pipelines."""

from xlafw.data.collators import (
    ChatMessages,
    DocumentBoundaries,
    PromptCompletion,
    Truncation,
)
from xlafw.data.heldout import Split
from xlafw.data.mixture import Mixture
from xlafw.data.overlap import sources_overlap
from xlafw.data.pairs import ConsecutivePairs
from xlafw.data.pipeline import DataPipeline, HostShard
from xlafw.data.sft import SftPipeline
from xlafw.data.sources import SHAKESPEARE_TEXTS, HubDataset, LocalFiles, TextFiles
from xlafw.data.streams import StreamPosition
from xlafw.data.tokenizers import HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer

__all__ = [
    "SHAKESPEARE_TEXTS",
    "ChatMessages",
    "ConsecutivePairs",
    "DataPipeline",
    "DocumentBoundaries",
    "HostShard",
    "HubDataset",
    "HuggingFaceTokenizer",
    "LocalFiles",
    "Mixture",
    "PromptCompletion",
    "SentencePieceTokenizer",
    "SftPipeline",
    "Split",
    "StreamPosition",
    "TextFiles",
    "Tokenizer",
    "Truncation",
    "sources_overlap",
]
