"""``python -m xlafw.sample``: continue a prompt with a trained model.

From a training run (the newest checkpoint that verifies, or ``--step``):

    python -m xlafw.sample --run_dir=runs/llama_tiny --prompt="ROMEO:" --max_new_tokens=64

From a Hugging Face directory (an export, or a model to import), greedy, on CPU:

    python -m xlafw.sample --hf_dir=/tmp/llama_export --prompt="ROMEO:" --temperature=0 \\
        --device=cpu --tokenizer=pkg:mistral_common/data/tokenizer.model.v1

The text (prompt and continuation) goes to stdout; one line of timings to
stderr. Generation stops after the tokenizer's EOS or ``--max_new_tokens``.
Exit status: 0 done, 2 a bad flag, run directory, checkpoint or tokenizer
(one line naming it; nothing is loaded onto a device).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from xlafw.exit_codes import ExitCode

FLAGS = flags.FLAGS
_RUN_DIR = flags.DEFINE_string("run_dir", None, "A training run's directory (trainer.run_dir).")
_HF_DIR = flags.DEFINE_string(
    "hf_dir", None, "A local Hugging Face Llama directory (config.json + safetensors) instead."
)
_STEP = flags.DEFINE_integer(
    "step", None, "With --run_dir: the checkpoint step; default the newest that verifies."
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer",
    None,
    "A sentencepiece .model file (pkg: paths allowed) or a Hugging Face tokenizer directory; "
    "default the run's tokenizer, or the --hf_dir's own.",
)
_PROMPT = flags.DEFINE_string("prompt", None, "The text to continue.")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 64, "Tokens to generate at most.", lower_bound=1
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 0.8, "0 takes the most likely token (greedy); above 0 samples.", lower_bound=0
)
_TOP_K = flags.DEFINE_integer(
    "top_k", 40, "Sample among the k most likely tokens; 0 means all.", lower_bound=0
)
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the sampling; the same seed, the same text.")
_DEVICE = flags.DEFINE_enum(
    "device", "xla", ["xla", "cpu"], "XLA (static shapes, compiled once) or eager CPU."
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, but a bad flag exits 2 with one line instead of 1 with a usage dump."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}. Fix: see python -m xlafw.sample --helpshort", file=sys.stderr)
        sys.exit(ExitCode.CONFIG_ERROR)


def _source_problem() -> str | None:
    if bool(_RUN_DIR.value) == bool(_HF_DIR.value):
        return "pass exactly one of --run_dir=DIR (a training run) or --hf_dir=DIR (Hugging Face)"
    if _STEP.value is not None and not _RUN_DIR.value:
        return (
            f"--step={_STEP.value} picks a checkpoint of a --run_dir; a --hf_dir holds one set "
            f"of weights. Fix: drop --step."
        )
    if not _PROMPT.value:
        return '--prompt is empty. Fix: pass the text to continue, e.g. --prompt="ROMEO:"'
    return None


def _load():
    """Model and tokenizer from the flags (on the host)."""
    from xlafw.sample import load

    if _RUN_DIR.value:
        loaded = load.from_run_dir(_RUN_DIR.value, _STEP.value)
    else:
        loaded = load.from_hf_dir(_HF_DIR.value)
    tokenizer = load.tokenizer_from(_TOKENIZER.value) if _TOKENIZER.value else loaded.tokenizer
    if tokenizer is None:
        raise load.SampleError(
            f"{loaded.source} comes with no tokenizer. Fix: pass --tokenizer=FILE.model or "
            f"--tokenizer=DIR (a Hugging Face tokenizer)."
        )
    if tokenizer.vocab_size > loaded.model.config.vocab_size:
        raise load.SampleError(
            f"--tokenizer: its {tokenizer.vocab_size} ids exceed the model's vocabulary of "
            f"{loaded.model.config.vocab_size}. Fix: pass the tokenizer the model was trained with."
        )
    return loaded, tokenizer


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; flags take --name=value", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    logging.set_verbosity(logging.WARNING)  # the text and one line of timings, no INFO logs
    if problem := _source_problem():
        print(f"error: {problem}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    from xlafw.checkpoint import CheckpointError
    from xlafw.models.hf_config import HfCheckpointError
    from xlafw.sample import SampleError, SamplingSettings, decode, generate

    try:
        loaded, tokenizer = _load()
        prompt_ids = tokenizer.encode_batch([_PROMPT.value])[0]
    except (SampleError, HfCheckpointError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    model = loaded.model
    if _DEVICE.value == "xla":
        from xlafw import runtime

        model.to(runtime.start(spmd=False).device)
    settings = SamplingSettings(
        max_new_tokens=_MAX_NEW_TOKENS.value,
        temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value,
        seed=_SEED.value,
        stop_id=tokenizer.eos_id,
    )
    result = generate(model, prompt_ids, settings)
    print(decode(tokenizer, result.prompt_ids + result.new_ids), flush=True)
    compiles = "" if result.compilations is None else f", {result.compilations} compilations"
    print(
        f"[xlafw.sample] {loaded.source} on {_DEVICE.value}: {len(result.new_ids)} new tokens; "
        f"first {result.first_token_s:.2f} s, second {result.second_token_s:.2f} s "
        f"(prefill and decode step{compiles}), then {result.tokens_per_s:.1f} tokens/s",
        file=sys.stderr,
    )
    return ExitCode.OK


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
