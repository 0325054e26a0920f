"""torchprime's trainer on llama_tiny's workload, for ``benchmarks.sharded_step --torchprime``.

torchprime (AI-Hypercomputer/torchprime) is not a dependency of xlafw: its
source and its Python dependencies live outside the repository and are put on
``PYTHONPATH`` of the torchprime child process only.

Setup, once (about a minute; ~140 MB in ``~/.cache/xlafw``)::

    git clone https://github.com/AI-Hypercomputer/torchprime ~/src/torchprime  # or a fork
    PY=$(make -s python-path)
    $PY -m benchmarks.torchprime_step --setup --git_dir ~/src/torchprime

(``--git_dir`` defaults to ``$TORCHPRIME_GIT_DIR``), which runs, in effect::

    mkdir -p ~/.cache/xlafw/torchprime-src
    git -C ~/src/torchprime archive 96ac3f4 \\
        | tar -x -C ~/.cache/xlafw/torchprime-src
    $PY -m pip install --no-deps --target ~/.cache/xlafw/torchprime-deps \\
        hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 \\
        transformers==4.51.3 tokenizers==0.21.4 huggingface-hub==0.36.2 \\
        datasets==3.0.0 dill==0.3.8 multiprocess==0.70.16 fsspec==2024.6.1 \\
        dataclasses-json==0.6.7 marshmallow==3.26.2 typing-inspect==0.9.0 \\
        mypy-extensions==1.2.0

``--commit`` chooses another commit. The
default commit, 96ac3f4 (2025-05-23, PR #248), is the last upstream
AI-Hypercomputer/torchprime commit in the weirayao/torchprime fork's history:
the fork's own later commits make the trainer load Hugging Face weights from
the hub and log in to a wandb server on every run, so they cannot train here.
The pins are torchprime's (``pyproject.toml``: transformers 4.51.3, datasets
3.0.0) with the versions those need; the venv's own transformers 5 and
datasets 5 lack modules torchprime imports, so the child shadows them. Nothing
is installed into the venv and torchprime's heavy extras (tensorflow,
tensorboard, the BigQuery writer) are not needed on the training path.

Run (SHORT runs on a shared machine; the benchmark's defaults on an idle one)::

    $PY -m benchmarks.sharded_step --meshes fsdp=4 --single \\
        --torchprime ~/.cache/xlafw/torchprime-src
    $PY -m benchmarks.torchprime_step --devices 4 --steps 12 --warmup 4 --log_every 2

What runs: ``torchprime.torch_xla_models.train.main``, the function under its
``@hydra.main``, given the config Hydra composes from torchprime's configs/
with overrides (``overrides``; Hydra's own run directory and log files are
skipped: ``@hydra.main`` looks a module's configs up as a package, which
configs/ is not). The overrides give llama_tiny's model (sizes read from
``experiments.llama_tiny``), [8, 256] batches, the ``ici_mesh.fsdp`` axis over
every device (SPMD, torchprime's ``llama-fsdp`` rules, the same as xlafw's
``LLAMA_FSDP``), no remat, the reference attention (``attention_kernel=null``),
no profiling (``profile_step=-1``); torchprime has no checkpointing or eval in
this trainer. Data goes through torchprime's own path
(``make_huggingface_dataset``: ``datasets`` reads a text file of Shakespeare
that the parent writes, a Hugging Face tokenizer built from the same Mistral
32k sentencepiece model xlafw uses tokenizes it, ``group_texts`` packs it into
256-token rows, ``MpDeviceLoader`` shards the batches). The child builds that
tokenizer (~2 s) and appends train.py's directory to ``sys.path``, as running
train.py as a script does (its ``model_class`` is ``llama.LlamaForCausalLM``).

Three things are changed in the child without editing torchprime's source:

- the optimizer: torchprime's trainer hard-codes transformers' Adafactor; the
  child replaces the name ``Adafactor`` in torchprime's train module by
  ``torch.optim.AdamW`` (llama_tiny's lr, betas and weight decay), as the
  workload asks (``--torchprime_optimizer adafactor`` keeps torchprime's);
- the parameter dtype: torchprime builds the model in bfloat16 always; with
  ``--dtype float32`` the child makes its ``set_default_dtype`` use float32;
- ``--torchprime_clip`` (off by default) clips gradients to norm 1.0 with
  ``torch.nn.utils.clip_grad_norm_`` inside the optimizer step, as xlafw and
  the hand loop do; torchprime's step has no clipping.

Per-step rows: torchprime logs ``Epoch: E, step: S, loss: L`` (S counted from
0) from an asynchronous step closure once the step's loss is on the host,
every ``logging_steps`` (k) steps. A logging handler turns each such line into a
metrics.jsonl row ``{"step": S + 1, "loss", "timestamp", "compiles"}`` (the
record's creation time; ``UncachedCompile`` from torch_xla's metrics), and
torchprime's "Finished training run" (after ``xm.wait_device_ops()``) into the
row of the last step when that step was not logged. Rows so fall on steps 1,
k + 1, 2k + 1, ... and the last (xlafw's on 1, k, 2k, ...). Nothing is added to
the step itself.

Remaining differences from xlafw's llama_tiny step (same parameter and batch shapes):

- no gradient clipping (unless ``--torchprime_clip``), no per-parameter update
  RMS clip, no logged gradient / update norms;
- the optimizer is ``torch.optim.AdamW`` (one parameter at a time: no foreach
  kernels on XLA; decay on every parameter; the learning rate a host float
  set each step by transformers' cosine schedule, run inside the step
  function), xlafw's is its own AdamW (state and schedule on the device, decay
  on matrices only);
- attention: K and V repeated to every query head (``repeat_kv``), an additive
  causal mask built in each forward with ``triu`` of -inf and multiplied by the
  tokenizer's all-ones ``attention_mask`` (a third [8, 256] input), softmax of
  scores in the compute dtype upcast to float32; xlafw: grouped einsum without
  repeating K/V, ``where`` mask, float32 scores;
- the LM head runs on all 256 positions and the logits are sliced after it
  (xlafw slices the hidden states first: 255 positions); loss is
  ``CrossEntropyLoss`` mean (xlafw: summed, divided by the target count);
- ``nn.Linear`` is always replaced by torch_xla's einsum form, and SPMD is on
  even on one device (xlafw on one device: no SPMD, plain ``nn.Linear``);
- the model is initialised on the XLA device (xlafw: on the host, copied), so
  torchprime compiles one graph more (3 against xlafw's 2);
- batches come through torch_xla's ``MpDeviceLoader`` (a background thread
  copying the next batches ahead), xlafw's through its own pipeline;
- torchprime's profiler server listens on port 9012 for the whole run (idle).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("~/.cache/xlafw").expanduser()
DEFAULT_SOURCE = CACHE / "torchprime-src"
DEFAULT_DEPS = CACHE / "torchprime-deps"
# The last upstream (AI-Hypercomputer) commit in the fork's history.
DEFAULT_COMMIT = "96ac3f4"
# torchprime's training path on torch_xla 2.9, installed with --no-deps: the venv
# provides torch, torch_xla, numpy, pyarrow, pandas, requests, aiohttp, PyYAML.
DEPS = (
    "hydra-core==1.3.2",
    "omegaconf==2.3.0",
    "antlr4-python3-runtime==4.9.3",
    "transformers==4.51.3",
    "tokenizers==0.21.4",
    "huggingface-hub==0.36.2",
    "datasets==3.0.0",
    "dill==0.3.8",
    "multiprocess==0.70.16",
    "fsspec==2024.6.1",
    "dataclasses-json==0.6.7",
    "marshmallow==3.26.2",
    "typing-inspect==0.9.0",
    "mypy-extensions==1.2.0",
)
TRAIN_LOGGER = "torchprime.torch_xla_models.train"
STEP_LINE = re.compile(r"Epoch: \d+, step: (\d+), loss: (\S+),")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The torchprime options, shared with ``benchmarks.sharded_step``."""
    parser.add_argument(
        "--torchprime_deps",
        type=Path,
        default=DEFAULT_DEPS,
        help="the --target directory of torchprime's Python dependencies",
    )
    parser.add_argument(
        "--torchprime_optimizer",
        choices=("adamw", "adafactor"),
        default="adamw",
        help="adamw: llama_tiny's optimizer in place of torchprime's Adafactor",
    )
    parser.add_argument(
        "--torchprime_clip",
        action="store_true",
        help="clip gradients to norm 1.0 in torchprime's step, as xlafw does",
    )


def setup(source: Path, deps: Path, git_dir: Path | None, commit: str) -> None:
    """Extracts torchprime's source and installs its dependencies (outside the venv)."""
    if not (source / "torchprime" / "torch_xla_models" / "train.py").exists():
        if git_dir is None:
            raise SystemExit(
                "--setup needs a git clone of torchprime: pass --git_dir=PATH or set "
                "TORCHPRIME_GIT_DIR (git clone https://github.com/AI-Hypercomputer/torchprime)."
            )
        git_dir = git_dir.expanduser()
        source.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(
            ["git", "-C", str(git_dir), "archive", commit], stdout=subprocess.PIPE
        )
        subprocess.run(["tar", "-x", "-C", str(source)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {commit} failed in {git_dir}")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(deps)]
    subprocess.run([*pip, *DEPS], check=True, cwd=tempfile.gettempdir())
    print(f"torchprime source: {source}\ntorchprime dependencies: {deps}")


# The parent side (the benchmark's environment).


def _write_text(path: Path, tokens: int) -> None:
    """Shakespeare's paragraphs, in order, until ``tokens`` Mistral-32k tokens."""
    from xlafw.data import SHAKESPEARE_TEXTS, SentencePieceTokenizer, TextFiles

    tokenizer = SentencePieceTokenizer()
    docs = TextFiles(paths=(SHAKESPEARE_TEXTS,)).documents(0, 1)
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        while written < tokens:
            chunk = [next(docs) for _ in range(256)]
            written += sum(len(ids) + 1 for ids in tokenizer.encode_batch(chunk))
            out.write("\n".join(chunk) + "\n")


def overrides(devices: int, args, work: Path) -> list[str]:
    """Hydra overrides: llama_tiny's workload in torchprime's config."""
    import fiddle as fdl

    from xlafw.config import build_config

    cfg = build_config("llama_tiny")
    model = fdl.build(cfg.model.config)
    if model.head_dim not in (None, model.hidden_size // model.num_attention_heads):
        raise ValueError("torchprime's Llama derives head_dim from hidden_size / heads")
    if model.rope_scaling is not None:
        raise ValueError("llama_tiny's RoPE scaling is not translated to torchprime's")
    return [
        f"model.{name}={getattr(model, name)}"
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rope_theta",
            "rms_norm_eps",
            "initializer_range",
        )
    ] + [
        "model.attention_kernel=null",
        "model.remat.activation_checkpoint_layers=[]",
        "model.remat.optimization_barrier_layers=[]",
        f"model.tokenizer_name={work / 'tokenizer'}",
        f"global_batch_size={cfg.data.global_batch_size}",
        f"block_size={cfg.data.seq_len}",
        f"max_steps={args.steps}",
        f"logging_steps={args.log_every}",
        "profile_step=-1",
        f"dataset_name={work / 'data'}",
        "dataset_config_name=null",
        f"cache_dir={work / 'cache'}",
        f"output_dir={work / 'out'}",
        f"optimizer.learning_rate={cfg.optimizer.lr}",
        # Keys torchprime does not have, read by the child's AdamW.
        f"+optimizer.betas=[{','.join(str(b) for b in cfg.optimizer.betas)}]",
        f"+optimizer.weight_decay={cfg.optimizer.weight_decay}",
        "lr_scheduler.type=cosine",
        f"lr_scheduler.warmup_steps={cfg.lr_schedule.warmup_steps}",
        "ici_mesh.data=1",
        f"ici_mesh.fsdp={devices}",
        "ici_mesh.tensor=1",
        "ici_mesh.expert=1",
    ]


def run_torchprime(devices: int, args, source: Path) -> dict:
    """torchprime's trainer in a fresh process: the keys of ``sharded_step.run_xlafw``."""
    from benchmarks.sharded_step import _collectives, _dump_env, _rows, _watch
    from xlafw.config import build_config
    from xlafw.data import files
    from xlafw.parallel import hlo

    source = Path(source).expanduser().resolve()
    deps = Path(args.torchprime_deps).expanduser().resolve()
    if not (source / "torchprime" / "torch_xla_models" / "train.py").exists():
        raise FileNotFoundError(f"no torchprime source in {source}: run --setup")
    if not (deps / "hydra").is_dir():
        raise FileNotFoundError(f"no torchprime dependencies in {deps}: run --setup")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        metrics, dump = work / "metrics.jsonl", work / "dump"
        cfg_overrides = overrides(devices, args, work)
        data = build_config("llama_tiny").data
        # Twice the tokens the run reads: the loader never wraps around.
        tokens = 2 * (args.steps + 1) * data.global_batch_size * data.seq_len
        _write_text(work / "data" / "train.txt", tokens)
        python_path = [str(source), str(deps), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {
            **_dump_env(devices, dump),
            "PJRT_DEVICE": os.environ.get("PJRT_DEVICE", "CPU"),
            "PYTHONPATH": os.pathsep.join(python_path),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.torchprime_step",
            "--child",
            f"--metrics={metrics}",
            f"--dtype={args.dtype}",
            f"--steps={args.steps}",
            f"--sp_model={files.resolve_one('pkg:mistral_common/data/tokenizer.model.v1')}",
            f"--tokenizer_dir={work / 'tokenizer'}",
            f"--torchprime_optimizer={args.torchprime_optimizer}",
            *(["--torchprime_clip"] if args.torchprime_clip else []),
            "--",
            *cfg_overrides,
        ]
        result = _watch(cmd, env, metrics, args.warmup, args.steps)
        result["compiles"] = _rows(metrics)[-1]["compiles"]
        # torchprime builds the model on the device: the first module compiled is
        # that initialization (sharded random init), longer in text than the step's.
        modules = hlo.optimized_modules(dump)  # in compile order
        result["collectives"] = _collectives(dump, exclude=frozenset(modules[:1]))
    return result


# The child side (torchprime's environment: no xlafw imports here).


class _StepRows(logging.Handler):
    """Writes a metrics row for each step torchprime logs."""

    def __init__(self, path: str, steps: int):
        super().__init__()
        self.out = open(path, "w")  # noqa: SIM115 (open for the process's life)
        self.steps = steps
        self.last = 0

    def _write(self, step: int, loss: float | None, created: float) -> None:
        import torch_xla.debug.metrics as met

        if step <= self.last:  # already written (the final line after the last logged step)
            return
        self.last = step
        row = {
            "step": step,
            "loss": loss,
            "timestamp": created,
            "compiles": int(met.counter_value("UncachedCompile") or 0),
        }
        self.out.write(json.dumps(row) + "\n")
        self.out.flush()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if match := STEP_LINE.match(message):
            self._write(int(match[1]) + 1, float(match[2]), record.created)
        elif message.startswith("Finished training run"):
            self._write(self.steps, None, record.created)


def child(args, hydra_overrides: list[str]) -> None:
    """Starts torchprime's trainer (run in its own process by ``run_torchprime``)."""
    logging.basicConfig(  # what torchprime's train.py does as __main__
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    import torch
    from transformers import LlamaTokenizerFast

    # A Hugging Face tokenizer for AutoTokenizer.from_pretrained (the hub is
    # out of reach): the sentencepiece model xlafw's llama_tiny tokenizes with.
    LlamaTokenizerFast(vocab_file=args.sp_model, legacy=True).save_pretrained(args.tokenizer_dir)

    from torchprime.torch_xla_models import train

    # torchprime runs train.py as a script, whose directory is then on sys.path: its
    # model_class "llama.LlamaForCausalLM" is imported from there.
    sys.path.append(str(Path(train.__file__).parent))
    if args.dtype != "bfloat16":
        dtype, set_default_dtype = getattr(torch, args.dtype), train.set_default_dtype
        train.set_default_dtype = lambda _bfloat16: set_default_dtype(dtype)
    # train.main is @hydra.main(config_path="configs", config_name="default"). Hydra
    # looks a module's configs up as a package, which torchprime's configs/ is not,
    # so the same config is composed here with the overrides and handed to the
    # function hydra.main wraps (without Hydra's run directory and log files).
    from hydra import compose, initialize_config_dir

    configs = Path(train.__file__).parent / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        config = compose(config_name="default", overrides=hydra_overrides)
    if args.torchprime_optimizer == "adamw":
        clip, options = args.torchprime_clip, config.optimizer

        class AdamW(torch.optim.AdamW):
            def step(self, closure=None):
                if clip:
                    params = [p for group in self.param_groups for p in group["params"]]
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                return super().step(closure)

        def adamw(params, lr, **_adafactor_options):
            betas = tuple(options.betas)
            return AdamW(params, lr=lr, betas=betas, weight_decay=options.weight_decay)

        train.Adafactor = adamw
    elif args.torchprime_clip:
        raise ValueError("--torchprime_clip is implemented for adamw only")
    logging.getLogger(TRAIN_LOGGER).addHandler(_StepRows(args.metrics, args.steps))
    train.main.__wrapped__(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="extract the source, install deps")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument(
        "--git_dir",
        type=Path,
        default=os.environ.get("TORCHPRIME_GIT_DIR"),
        help="a git clone of torchprime, read by --setup (default: $TORCHPRIME_GIT_DIR)",
    )
    parser.add_argument("--commit", default=DEFAULT_COMMIT, help="torchprime commit (--setup)")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--log_every", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    add_arguments(parser)
    # The child process's own flags.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metrics", help=argparse.SUPPRESS)
    parser.add_argument("--sp_model", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer_dir", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child(args, [r for r in rest if r != "--"])
    elif args.setup:
        setup(
            args.source.expanduser(), args.torchprime_deps.expanduser(), args.git_dir, args.commit
        )
    else:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        start = time.time()
        result = run_torchprime(args.devices, args, args.source)
        result["wall_s"] = time.time() - start
        print(json.dumps(result))


if __name__ == "__main__":
    main()
