"""Generating tokens: greedy, temperature and top-k sampling over a static KV cache.

One loop serves XLA and eager CPU; only the shapes it chooses are made for XLA:

- the prompt is padded to a power of two (at least ``MIN_PROMPT_BUCKET``): one
  prefill graph per bucket, not per prompt length;
- the cache holds a power of two of positions (at least ``MIN_CACHE_LEN``), so
  every ``max_new_tokens`` up to it uses the same graphs;
- a decode step's inputs are the previous token, its position and the noise,
  all tensors, and its outputs stay on the device; ``torch_xla.sync()`` after
  each step runs the same cached graph, asynchronously. Tokens are read back
  once, at the end, so XLA always runs ``max_new_tokens`` steps and the result is
  cut after the stop token; eager CPU stops as soon as it appears.

Sampling draws Gumbel noise on the host from a ``torch.Generator`` seeded with
``seed`` and adds it to the scaled logits (``argmax(logits / T + g)`` is a
sample of ``softmax(logits / T)``). The noise is the same on every device, so a
seed gives the same tokens on XLA and on CPU wherever the logits agree.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from xlafw.models.kv_cache import KVCache, forward_cached
from xlafw.models.llama import LlamaForCausalLM

MIN_PROMPT_BUCKET = 16
MIN_CACHE_LEN = 256


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How many tokens to generate and how each is chosen.

    Attributes:
      max_new_tokens: tokens to generate after the prompt (at least 1).
      temperature: 0 takes the most likely token (greedy); above 0 samples from
        ``softmax(logits / temperature)``: lower is more conservative.
      top_k: sample only among the ``top_k`` most likely tokens; 0 means all.
        Greedy decoding ignores it.
      seed: seeds the sampling noise; the same seed gives the same tokens.
      stop_id: end generation after this token (the tokenizer's EOS), which is
        kept in the result; None always generates ``max_new_tokens``.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    stop_id: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.temperature < 0 or self.top_k < 0:
            raise ValueError(
                f"{self}: max_new_tokens must be at least 1, temperature and top_k at least 0"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass(frozen=True)
class Generation:
    """What ``generate`` produced, and how long it took.

    Attributes:
      prompt_ids: the prompt's tokens.
      new_ids: the generated tokens, ending with ``stop_id`` if it came.
      first_token_s: seconds to the first new token: prefill, plus its
        compilation when cold.
      second_token_s: seconds of the first decode step, plus its compilation
        when cold (0 if only one token was generated).
      steady_steps: decode steps after the first (on XLA every step up to
        ``max_new_tokens`` runs, also after the stop token).
      steady_s: their seconds.
      compilations: XLA compilations during the call (0 once warm); None on CPU.
    """

    prompt_ids: list[int]
    new_ids: list[int]
    first_token_s: float
    second_token_s: float
    steady_steps: int
    steady_s: float
    compilations: int | None

    @property
    def tokens_per_s(self) -> float:
        """The steady decode rate: tokens per second after the second."""
        return self.steady_steps / self.steady_s if self.steady_steps else 0.0


def bucket(length: int, minimum: int) -> int:
    """The smallest power of two that is at least ``length`` and ``minimum``."""
    size = minimum
    while size < length:
        size *= 2
    return size


class _TokenChooser:
    """Picks the next token from ``[batch, vocab]`` logits, on the logits' device."""

    def __init__(self, settings: SamplingSettings, vocab_size: int, device: torch.device):
        self.settings = settings
        self.vocab_size = vocab_size
        self.device = device
        self.noise = torch.Generator().manual_seed(settings.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.settings.greedy:
            return logits.argmax(dim=-1)
        top_k = min(self.settings.top_k, self.vocab_size)
        if top_k:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = torch.where(logits < kth, float("-inf"), logits)
        # Only the uniform draw runs on the host; the logarithms run where the logits are.
        uniform = torch.rand(logits.shape, generator=self.noise).to(self.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
        return (logits / self.settings.temperature + gumbel).argmax(dim=-1)


def _cut_after(ids: list[int], stop_id: int | None) -> list[int]:
    if stop_id is not None and stop_id in ids:
        return ids[: ids.index(stop_id) + 1]
    return ids


def generate(
    model: LlamaForCausalLM, prompt_ids: list[int], settings: SamplingSettings
) -> Generation:
    """Continues ``prompt_ids`` with ``model`` on the device its parameters are on.

    Args:
      model: a causal Llama on the CPU (eager) or an XLA device (static shapes).
      prompt_ids: the prompt's tokens, at least one.
      settings: how many tokens and how to choose them.

    Returns:
      The new tokens and timings.

    Raises:
      ValueError: for an empty prompt or a token outside the vocabulary.
    """
    vocab = model.config.vocab_size
    if not prompt_ids or not all(0 <= t < vocab for t in prompt_ids):
        raise ValueError(f"the prompt must be 1 or more token ids in [0, {vocab}): {prompt_ids}")
    param = next(model.parameters())
    device, on_xla = param.device, param.device.type == "xla"
    if on_xla:
        import torch_xla

        from xlafw.runtime import compile_count

        sync, compiles_before = torch_xla.sync, compile_count()
    else:
        sync, compiles_before = (lambda: None), None
    length = len(prompt_ids)
    padded = bucket(length, MIN_PROMPT_BUCKET)
    cache_len = bucket(padded + settings.max_new_tokens, MIN_CACHE_LEN)
    choose = _TokenChooser(settings, vocab, device)
    start = time.perf_counter()
    with torch.no_grad():
        # Padding takes token 0; its keys sit past the prompt, hidden until overwritten.
        ids = torch.tensor([prompt_ids + [0] * (padded - length)], device=device)
        zero = torch.zeros(1, dtype=torch.long, device=device)
        cache = KVCache.empty(model.config, 1, cache_len, param.dtype, device)
        last = torch.tensor([length - 1], device=device)
        token = choose(forward_cached(model, ids, zero, last, cache))
        position = torch.tensor([length], device=device)
        sync()
        tokens = [token]
        stopped = int(token.cpu()[0]) == settings.stop_id  # waits: times the first token
        first_token_s = second_token_s = time.perf_counter() - start
        for step in range(settings.max_new_tokens - 1):
            if stopped:
                break
            token = choose(forward_cached(model, token[:, None], position, zero, cache))
            position = position + 1
            sync()
            tokens.append(token)
            # Eager CPU reads every token (it is there already); XLA only waits for the
            # first decode step, to time it apart from the steady steps.
            if not on_xla or step == 0:
                stopped = int(token.cpu()[0]) == settings.stop_id
            if step == 0:
                second_token_s = time.perf_counter() - start
        new_ids = [int(t.cpu()[0]) for t in tokens]  # on XLA: transfers, no graph
    return Generation(
        prompt_ids=list(prompt_ids),
        new_ids=_cut_after(new_ids, settings.stop_id),
        first_token_s=first_token_s,
        second_token_s=second_token_s - first_token_s,
        steady_steps=max(len(tokens) - 2, 0),
        steady_s=time.perf_counter() - start - second_token_s,
        compilations=compile_count() - compiles_before if on_xla else None,
    )
