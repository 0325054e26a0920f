"""A model and its tokenizer, from a run directory's checkpoint or a Hugging Face directory.

Both load on the host (the caller moves the model to its device): sampling
runs on one device, and a host load reads the same files on every backend.

- A run directory: its ``config.json`` (Fiddle JSON, written by every run)
  builds the model in the run's dtype and names the tokenizer; the newest
  checkpoint that verifies against its ``COMMITTED`` marker (or ``step``) fills
  the weights through ``CheckpointManager.restore_state``, the same safe loading
  a resume uses. Nothing in the run directory is changed.
- A Hugging Face directory (``config.json`` + safetensors, e.g. an export):
  ``load_hf_weights`` fills a float32 model; its tokenizer is the directory's
  own, if it has one.
"""

from __future__ import annotations

import dataclasses
import os

import fiddle as fdl
import torch
from etils import epath

from xlafw.config.loading import load_config_json
from xlafw.data.tokenizers import HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer
from xlafw.experiment import Experiment
from xlafw.models.llama import LlamaForCausalLM
from xlafw.trainer import default_dtype

# Files that make a directory loadable by transformers.AutoTokenizer.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class SampleError(ValueError):
    """A run, checkpoint or tokenizer cannot be sampled from; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to sample from, on the host.

    Attributes:
      model: the model in eval mode, weights loaded.
      tokenizer: the tokenizer it was trained with, or None when the source
        names none (then ``--tokenizer`` must).
      source: where the weights came from, for the log line.
    """

    model: LlamaForCausalLM
    tokenizer: Tokenizer | None
    source: str


def tokenizer_from(spec: str) -> Tokenizer:
    """The tokenizer ``--tokenizer`` names.

    Args:
      spec: a sentencepiece ``.model`` file (``pkg:`` paths allowed), or a local
        directory (or hub name) ``transformers.AutoTokenizer`` loads.
    """
    if spec.endswith(".model") or spec.startswith("pkg:"):
        return SentencePieceTokenizer(model_file=spec)
    return HuggingFaceTokenizer(name_or_path=spec)


def decode(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Text of ``ids``; special tokens (EOS) are dropped.

    ``Tokenizer`` only encodes, so the vocabulary is read again from the
    tokenizer's file or directory (once per call: a sample decodes once).

    Raises:
      SampleError: for a tokenizer type this function does not know.
    """
    if isinstance(tokenizer, SentencePieceTokenizer):
        import sentencepiece

        from xlafw.data import files

        processor = sentencepiece.SentencePieceProcessor(
            model_file=files.resolve_one(tokenizer.model_file)
        )
        return processor.decode(ids)
    if isinstance(tokenizer, HuggingFaceTokenizer):
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
        return hf.decode(ids, skip_special_tokens=True)
    raise SampleError(f"cannot decode with {type(tokenizer).__name__}. Fix: pass --tokenizer.")


def _run_config(run_dir: str) -> fdl.Config[Experiment]:
    directory = epath.Path(run_dir)
    if not directory.is_dir():
        raise SampleError(
            f"--run_dir={run_dir}: no such directory. Fix: pass the trainer.run_dir of a "
            f"run (make train writes runs/llama_tiny), or --hf_dir for a Hugging Face one."
        )
    config_file = directory / "config.json"
    if not config_file.exists():
        raise SampleError(
            f"--run_dir={run_dir}: no config.json, so not a run directory xlafw wrote. "
            f"Fix: pass the directory a training run wrote (it holds config.json and "
            f"checkpoints/)."
        )
    try:
        return load_config_json(config_file.read_text())  # imports only xlafw's own names
    except Exception as e:
        raise SampleError(f"{config_file}: not a Fiddle JSON config xlafw wrote ({e}).") from None


def _checkpoint_step(manager, run_dir: str, step: int | None) -> int:
    """``step`` (checked) or the newest step that verifies."""
    from xlafw.checkpoint import commit

    steps = manager.steps()
    if not steps:
        raise SampleError(
            f"--run_dir={run_dir}: no committed checkpoint in {manager.directory}. Fix: train "
            f"until a checkpoint is written (checkpoint.every_steps, or the last step)."
        )
    if step is None:
        return manager.newest_valid_step()
    if step not in steps:
        raise SampleError(
            f"--step={step}: {manager.directory} has no committed checkpoint at that step. "
            f"Fix: pick one of {steps}, or omit --step for the newest."
        )
    if problem := commit.verify(manager.path(step)):
        raise SampleError(f"--step={step}: {manager.path(step)} is damaged ({problem}).")
    return step


def from_run_dir(run_dir: str, step: int | None = None) -> LoadedModel:
    """The model of a training run at checkpoint ``step`` (default: newest that verifies).

    Args:
      run_dir: the run's ``trainer.run_dir`` (local or ``gs://``). A checkpoint
        directory under ``{run_dir}`` is found there even if the run was moved.
      step: a committed step; None for the newest that verifies.

    Raises:
      SampleError: a missing or foreign run directory, no checkpoint, an
        unknown or damaged ``step``.
      CheckpointError: checkpoints exist but none verifies, or one cannot be read.
    """
    from xlafw.checkpoint import CheckpointManager

    cfg = _run_config(run_dir)
    try:
        experiment: Experiment = fdl.build(cfg)
    except Exception as e:
        raise SampleError(
            f"--run_dir={run_dir}: its config.json does not build with this xlafw ({e}). Fix: "
            f"sample with the revision that trained it (versions.json in the run directory)."
        ) from None
    checkpoint_dir = experiment.checkpoint.directory.format(run_dir=run_dir.rstrip("/"))
    manager = CheckpointManager(experiment.checkpoint, checkpoint_dir)
    step = _checkpoint_step(manager, run_dir, step)
    with default_dtype(experiment.trainer.torch_dtype):
        model = experiment.model()
    if not isinstance(model, LlamaForCausalLM):
        raise SampleError(f"--run_dir={run_dir}: sampling knows Llama models, not {type(model)}.")
    state = {"model": model.state_dict()}
    manager.restore_state(step, state)
    model.load_state_dict(state["model"])
    tokenizer_cfg = getattr(cfg.data, "tokenizer", None)
    tokenizer = fdl.build(tokenizer_cfg) if tokenizer_cfg is not None else None
    return LoadedModel(model.eval(), tokenizer, f"{manager.path(step)}")


def from_hf_dir(hf_dir: str) -> LoadedModel:
    """A float32 model from a local Hugging Face Llama directory, and its tokenizer if present.

    Raises:
      SampleError: a missing directory or one without ``config.json``.
      HfCheckpointError: a config or tensors that are not a Llama xlafw can build.
    """
    from xlafw.models import load_pretrained
    from xlafw.models.hf_config import remote_checkpoint_problem
    from xlafw.models.hf_io import read_hf_config

    if problem := remote_checkpoint_problem(hf_dir):
        raise SampleError(f"--hf_dir={problem}")
    config_file = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_file):
        what = "no config.json" if os.path.isdir(hf_dir) else "no such directory"
        raise SampleError(
            f"--hf_dir={hf_dir}: {what}. Fix: point to a directory written by "
            f"save_pretrained or xlafw's export (config.json + model*.safetensors)."
        )
    family, _ = read_hf_config(hf_dir)
    if family.model_class is not LlamaForCausalLM:
        raise SampleError(
            f"--hf_dir={hf_dir}: holds a {family.name} model; sampling (its KV cache) knows "
            f"Llama models only."
        )
    model = load_pretrained(hf_dir, dtype=torch.float32)
    has_tokenizer = any(os.path.exists(os.path.join(hf_dir, f)) for f in HF_TOKENIZER_FILES)
    tokenizer = HuggingFaceTokenizer(name_or_path=hf_dir) if has_tokenizer else None
    return LoadedModel(model.eval(), tokenizer, hf_dir)
