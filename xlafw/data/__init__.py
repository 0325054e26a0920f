"""Data: sources, tokenizers and the packing pipeline."""

from xlafw.data.pipeline import DataPipeline, HostShard, StreamPosition
from xlafw.data.sources import SHAKESPEARE_TEXTS, HubDataset, TextFiles
from xlafw.data.tokenizers import HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer

__all__ = [
    "SHAKESPEARE_TEXTS",
    "DataPipeline",
    "HostShard",
    "HubDataset",
    "HuggingFaceTokenizer",
    "SentencePieceTokenizer",
    "StreamPosition",
    "TextFiles",
    "Tokenizer",
]
