"""The generation loop: prefill each prompt, then decode all live sequences one token a step.

Sequences of different lengths share one static KV cache (a row each) and advance together;
each has its own sampler, detokenizer and stop-string matcher, so a batch gives the same
greedy tokens as running its prompts one at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from llamita.engine.sequence import SequenceState, StepOutput
from llamita.model.compiled import KEY_BLOCK, CompiledDecoder, compile_blocker
from llamita.model.kv_cache import KVCache
from llamita.model.transformer import Transformer
from llamita.sampling_params import SamplingParams
from llamita.tokenizer import Tokenizer

# Prompts are prefilled in chunks of this many tokens: attention scores of one chunk are
# (n_heads, chunk, context) floats, which bounds memory for long prompts.
PREFILL_CHUNK = 512


@dataclass
class GenerationStats:
    """Token counts and wall-clock seconds, for tokens/s reports."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_tokens: int = 0  # tokens sampled in decode steps (the first token comes from prefill)

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


class Generator:
    """Runs batches of token-id prompts through a model and yields tokens as they come."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        adapter: int | None = None,
        compile: bool = False,
        build: bool = True,
    ) -> None:
        """adapter: the LoRA adapter slot every sequence runs with (model.lora), None for none.
        compile: decode steps in which every sequence steps run as one compiled graph
        (model/compiled.py); with a LoRA adapter, tensor parallelism or layers split across
        devices they stay eager, and `compile_skipped` says why. build: a batch size whose
        package is not on disk builds it in the foreground; False: it decodes eagerly (a
        background builder, engine/step_builder.py, makes packages; a later batch uses them)."""
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.device = model.device
        self.context_length = model.config.context_length
        # A model may have more embedding rows than its tokenizer has tokens (padded vocab
        # tables); ids past the tokenizer mean nothing, so they are never candidates.
        self.n_tokens = min(model.config.vocab_size, tokenizer.vocab_size)
        self.last_stats = GenerationStats()
        self.compile_skipped = None if not compile or adapter is None else "a LoRA adapter is active"
        if compile and self.compile_skipped is None:
            self.compile_skipped = compile_blocker(model)
        self.compiled = CompiledDecoder(model, build=build) if compile and self.compile_skipped is None else None

    def _prepare(self, index: int, prompt_ids: list[int], params: SamplingParams) -> SequenceState:
        return SequenceState.create(index, prompt_ids, params, self.tokenizer, self.n_tokens, self.context_length)

    def stream(self, prompts: list[list[int]], params: list[SamplingParams]) -> Iterator[StepOutput]:
        """Yield StepOutputs for every sequence until all have finished.

        Stats of the run are in `self.last_stats` when the iterator is exhausted.
        """
        if len(prompts) != len(params):
            raise ValueError("one SamplingParams per prompt is required")
        seqs = [self._prepare(i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]
        stats = GenerationStats(prompt_tokens=sum(len(s.prompt_ids) for s in seqs))
        self.last_stats = stats
        max_len = max(len(s.prompt_ids) + s.max_new for s in seqs)
        compiled = self.compiled if self.compiled is not None and self.compiled.ready(len(seqs)) else None
        if compiled is not None:  # its lengths are symbolic from 2 on (export's rule)
            max_len = max(max_len, min(KEY_BLOCK, self.context_length))
        cache = KVCache(self.model.config, len(seqs), max_len, dtype=self.model.dtype, device=self.device)

        with torch.inference_mode():
            for seq in seqs:
                t0 = time.perf_counter()
                token = self._sample(seq, self._prefill(seq, cache))
                stats.prefill_seconds += time.perf_counter() - t0
                yield self._advance(seq, token, stats)

            while live := [s for s in seqs if s.finish_reason is None]:
                t0 = time.perf_counter()
                tokens = torch.tensor([[s.generated[-1]] for s in live], device=self.device)
                positions = torch.tensor([[len(s.history) - 1] for s in live], device=self.device)
                rows = None if len(live) == len(seqs) else torch.tensor([s.index for s in live], device=self.device)
                if compiled is not None and rows is None:
                    logits = compiled(tokens, positions, cache)
                else:
                    logits = self.model(
                        tokens, positions, cache, rows, last_only=True, adapters=self._adapters(len(live))
                    )[:, -1]
                sampled = [self._sample(seq, row) for seq, row in zip(live, logits)]
                stats.decode_seconds += time.perf_counter() - t0
                stats.decode_tokens += len(live)
                for seq, token in zip(live, sampled):
                    yield self._advance(seq, token, stats)

    def _prefill(self, seq: SequenceState, cache: KVCache) -> torch.Tensor:
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        rows = torch.tensor([seq.index], device=self.device)
        logits = None
        for start in range(0, ids.shape[1], PREFILL_CHUNK):
            chunk = ids[:, start : start + PREFILL_CHUNK]
            positions = torch.arange(start, start + chunk.shape[1], device=self.device)[None]
            logits = self.model(chunk, positions, cache, rows, last_only=True, adapters=self._adapters(1))
        assert logits is not None
        return logits[0, -1]

    def _adapters(self, batch: int) -> torch.Tensor | None:
        if self.adapter is None:
            return None
        return torch.full((batch,), self.adapter, dtype=torch.int64, device=self.device)

    def _sample(self, seq: SequenceState, logits: torch.Tensor) -> int:
        return seq.next_token(logits[: self.n_tokens].float().cpu())

    @staticmethod
    def _advance(seq: SequenceState, token: int, stats: GenerationStats) -> StepOutput:
        out = seq.advance(token)
        if out.token_id is not None:
            stats.generated_tokens += 1
        return out
