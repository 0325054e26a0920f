"""Text from a trained model: ``python -m xlafw.sample`` (see ``__main__``).

``load`` builds the model and tokenizer of a run directory's checkpoint or of
a Hugging Face directory; ``generate`` continues a prompt over the static KV
cache of ``xlafw.models.kv_cache``, on XLA or eager CPU. Importing this package
does not import torch_xla.
"""

from xlafw.sample.generate import Generation, SamplingSettings, generate
from xlafw.sample.load import LoadedModel, SampleError, decode, from_hf_dir, from_run_dir

__all__ = [
    "Generation",
    "LoadedModel",
    "SampleError",
    "SamplingSettings",
    "decode",
    "from_hf_dir",
    "from_run_dir",
    "generate",
]
