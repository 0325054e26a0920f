"""xlafw: config-as-code LLM training on PyTorch/XLA.

Importing the package imports no torch_xla; ``xlafw.runtime`` and
``xlafw.trainer`` do, and only the trainer path loads them.
"""

__version__ = "0.1.0"
