"""Sampling (``xlafw.sample``) on the real XLA CPU backend and eager CPU, against ``transformers``.

The model is a tiny random xlafw Llama exported with ``save_hf_weights`` and
loaded back through ``--hf_dir``'s path; ``transformers`` loads the same export.
Its weights are drawn wider than training's init (std 0.3), so the logits are
peaked and greedy choices are not near-ties. The command-line tests run
``python -m xlafw.sample`` in a subprocess, one of them on a run directory
written by a two-step training run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import fiddle as fdl
import pytest
import torch
import torch_xla
import transformers
from conftest import ROOT, run_xlafw
from fiddle.experimental import serialization

from xlafw.models import LlamaConfig, LlamaForCausalLM
from xlafw.models.hf_io import save_hf_weights
from xlafw.sample import SamplingSettings, from_hf_dir, from_run_dir, generate
from xlafw.sample.load import SampleError

TINY = LlamaConfig(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.3,
)
PROMPT = [5, 17, 42, 99, 3, 250, 7]  # 7 tokens: prefill pads them to 16
TOKENIZER = "pkg:mistral_common/data/tokenizer.model.v1"


def _device(name: str) -> torch.device:
    return torch_xla.device() if name == "xla" else torch.device("cpu")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny random xlafw Llama exported in Hugging Face layout; returns the directory."""
    directory = tmp_path_factory.mktemp("sample") / "export"
    torch.manual_seed(0)
    save_hf_weights(LlamaForCausalLM(TINY), directory)
    return directory


def _sampler(export, device: str) -> LlamaForCausalLM:
    return from_hf_dir(str(export)).model.to(_device(device))


def _transformers_greedy(export, prompt: list[int], max_new_tokens: int) -> list[int]:
    hf = transformers.LlamaForCausalLM.from_pretrained(export).eval()
    hf.generation_config.eos_token_id = None  # generate every token, as the sampler does
    out = hf.generate(
        torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("device", ["xla", "cpu"])
def test_greedy_decoding_of_an_exported_checkpoint_equals_transformers_generate(export, device):
    expected = _transformers_greedy(export, PROMPT, max_new_tokens=20)
    result = generate(_sampler(export, device), PROMPT, SamplingSettings(max_new_tokens=20))
    assert len(expected) == 20
    assert result.new_ids == expected


def test_xla_compiles_nothing_more_for_more_new_tokens_or_another_prompt_after_warm_up(export):
    model = _sampler(export, "xla")
    for settings in (SamplingSettings(), SamplingSettings(temperature=0.7, top_k=10)):
        warm = generate(model, PROMPT, dataclasses.replace(settings, max_new_tokens=8))
        assert warm.compilations <= 2  # prefill and decode step (0 if an earlier test did)
        longer = generate(model, PROMPT, dataclasses.replace(settings, max_new_tokens=16))
        other_prompt = generate(model, [1, 2, 3], dataclasses.replace(settings, max_new_tokens=12))
        assert (longer.compilations, other_prompt.compilations) == (0, 0)
        assert len(longer.new_ids) == 16


def test_seeded_sampling_is_reproducible_and_the_same_on_xla_and_cpu(export):
    cpu, xla = _sampler(export, "cpu"), _sampler(export, "xla")

    def sample(model, seed):
        return generate(
            model, PROMPT, SamplingSettings(16, temperature=1.0, top_k=10, seed=seed)
        ).new_ids

    assert sample(cpu, seed=1) == sample(cpu, seed=1) == sample(xla, seed=1)
    assert sample(cpu, seed=1) != sample(cpu, seed=2)


def test_top_k_of_one_is_greedy_and_stop_id_ends_the_sample(export):
    model = _sampler(export, "cpu")
    greedy = generate(model, PROMPT, SamplingSettings(max_new_tokens=12)).new_ids
    top_1 = generate(model, PROMPT, SamplingSettings(12, temperature=2.0, top_k=1, seed=3))
    assert top_1.new_ids == greedy
    stop = greedy[4]
    stopped = generate(model, PROMPT, SamplingSettings(max_new_tokens=12, stop_id=stop)).new_ids
    assert stopped == greedy[: greedy.index(stop) + 1]


def _sample_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xlafw.sample", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The run directory of a two-step llama_tiny_smoke training run, checkpointed at step 2."""
    run_dir = tmp_path_factory.mktemp("sample") / "run"
    result = run_xlafw(
        "--fdl_config=llama_tiny_smoke",
        "--fdl.trainer.max_steps=2",
        "--fdl.checkpoint.every_steps=2",
        f"--fdl.trainer.run_dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_sample_from_a_training_run_directory_prints_the_prompt_and_more_text(trained_run):
    result = _sample_cli(
        f"--run_dir={trained_run}", "--prompt=ROMEO:", "--max_new_tokens=8", "--seed=1"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout.strip()) > len("ROMEO:")
    assert "step_00000002 on xla" in result.stderr and "compilations" in result.stderr


def test_a_run_directory_loads_its_trained_weights_not_a_fresh_init(trained_run):
    loaded = from_run_dir(str(trained_run))
    torch.manual_seed(42)  # the trainer's seed: its initial weights
    fresh = LlamaForCausalLM(loaded.model.config).state_dict()
    trained = loaded.model.state_dict()
    assert not torch.equal(trained["lm_head.weight"], fresh["lm_head.weight"])
    assert loaded.source.endswith("step_00000002") and loaded.tokenizer is not None


def test_sample_from_an_exported_checkpoint_with_a_tokenizer_prints_text_on_cpu(tmp_path):
    torch.manual_seed(0)
    # The tokenizer's 32000 ids need a vocabulary that covers them.
    config = dataclasses.replace(TINY, vocab_size=32000, initializer_range=0.02)
    save_hf_weights(LlamaForCausalLM(config), tmp_path / "export")
    result = _sample_cli(
        f"--hf_dir={tmp_path / 'export'}",
        f"--tokenizer={TOKENIZER}",
        "--prompt=ROMEO:",
        "--max_new_tokens=4",
        "--device=cpu",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:")


def test_a_bad_source_or_flag_exits_2_with_one_line_naming_it(trained_run, export, tmp_path):
    empty_run = tmp_path / "empty_run"  # a run's config.json, no checkpoints
    empty_run.mkdir()
    shutil.copy(trained_run / "config.json", empty_run / "config.json")
    cases = {
        "--run_dir=/no/such/run: no such directory": ["--run_dir=/no/such/run"],
        "no committed checkpoint in": [f"--run_dir={empty_run}"],
        "--step=7: ": [f"--run_dir={trained_run}", "--step=7"],
        "comes with no tokenizer": [f"--hf_dir={export}"],
        "flag --temperature=-1": [f"--run_dir={trained_run}", "--temperature=-1"],
    }
    running = {  # at once: each process spends its time importing torch
        named: subprocess.Popen(
            [sys.executable, "-m", "xlafw.sample", "--prompt=x", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for named, args in cases.items()
    }
    for named, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, (named, stderr)
        assert named in stderr and len(stderr.strip().splitlines()) == 1, (named, stderr)
        assert "Traceback" not in stderr and stdout == "", (named, stderr)


def test_a_run_config_naming_code_outside_xlafw_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "code_ran"
    planted = fdl.Config(subprocess.run, ["touch", str(sentinel)])
    (tmp_path / "config.json").write_text(serialization.dump_json(planted))
    with pytest.raises(SampleError, match="not a Fiddle JSON config xlafw wrote"):
        from_run_dir(str(tmp_path))
    assert not sentinel.exists()


def test_the_sampler_never_writes_into_the_run_directory(trained_run):
    before = sorted(os.listdir(trained_run / "checkpoints"))
    from_run_dir(str(trained_run), step=2)
    assert sorted(os.listdir(trained_run / "checkpoints")) == before
