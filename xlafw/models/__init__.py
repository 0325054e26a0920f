"""Models xlafw trains. See ``llama.py``."""

from xlafw.models.attention import AttentionKernel, AttentionMasks
from xlafw.models.attention_kernels import KernelBlockSizes
from xlafw.models.llama import CausalLMOutput, LlamaConfig, LlamaForCausalLM
from xlafw.models.rope import Llama3RopeScaling

__all__ = [
    "AttentionKernel",
    "AttentionMasks",
    "CausalLMOutput",
    "KernelBlockSizes",
    "Llama3RopeScaling",
    "LlamaConfig",
    "LlamaForCausalLM",
]
