"""One sequence being generated: its tokens, sampler, detokenizer and stopping rules.

Used by the continuous-batching LLMEngine (the server, the Python API), so every front end decides
identically when a sequence ends and what text it shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llamita.engine.constraint import TokenConstraint
from llamita.engine.sampler import Sampler
from llamita.engine.stop import StopStringMatcher
from llamita.errors import ContextOverflowError, InvalidParameterError
from llamita.sampling_params import SamplingParams
from llamita.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class StepOutput:
    """What one sequence produced in one step: the new token (None when the step only closes
    the sequence), the text that became safe to show, and why it finished (None = running)."""

    index: int
    token_id: int | None
    text: str
    finish_reason: str | None = None


@dataclass
class SequenceState:
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    sampler: Sampler
    detok: IncrementalDetokenizer
    stops: StopStringMatcher
    stop_ids: frozenset[int]
    max_new: int
    constraint: TokenConstraint | None = None
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    # Prompt then generated ids, kept as one list: every step reads it (penalties, the next
    # input, the KV bookkeeping), so it is appended to, never rebuilt.
    history: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.history = self.prompt_ids + self.generated

    @classmethod
    def create(
        cls,
        index: int,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer: Tokenizer,
        vocab_size: int,
        context_length: int,
    ) -> SequenceState:
        """Validate a prompt against the vocabulary (`vocab_size` ids) and the context window
        (`context_length` positions) and set up its generation state."""
        if not prompt_ids:
            raise InvalidParameterError("prompt", "the prompt is empty (no tokens)")
        bad = [t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < vocab_size)]
        if bad:
            raise InvalidParameterError("prompt", f"token id {bad[0]} is outside the vocabulary")
        n = len(prompt_ids)
        if n >= context_length:
            raise ContextOverflowError(
                f"the prompt has {n} tokens but the context window holds {context_length} "
                f"(prompt plus at least one generated token): {n + 1 - context_length} too many"
            )
        bias_ids = [t for t, _ in params.logit_bias if t >= vocab_size]
        if bias_ids:
            raise InvalidParameterError(
                "logit_bias", f"token id {bias_ids[0]} is outside the vocabulary ({vocab_size} tokens)"
            )
        room = context_length - n
        max_new = room if params.max_tokens is None else min(params.max_tokens, room)
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else tokenizer.stop_ids)
        constraint = None if params.grammar is None else TokenConstraint(params.grammar, tokenizer, vocab_size)
        return cls(
            index,
            list(prompt_ids),
            params,
            Sampler(params, device="cpu"),
            IncrementalDetokenizer(tokenizer, skip_special=True),
            StopStringMatcher(params.stop),
            stop_ids,
            max_new,
            constraint,
        )

    def next_token(self, logits: torch.Tensor) -> int:
        """Draw the next token from one row of logits (vocab_size,), float32 on the CPU:
        grammar mask first (a forbidden token can never come back), then the sampler chain."""
        if self.constraint is not None:
            logits = self.constraint.mask(logits)
        return self.sampler.sample(logits, self.history)

    def advance(self, token: int) -> StepOutput:
        """Append a sampled token, decide whether the sequence ends, return what to show."""
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return StepOutput(self.index, None, self.stops.feed(self.detok.flush()) + self.stops.flush(), "stop")
        self.generated.append(token)
        self.history.append(token)
        text = self.stops.feed(self.detok.add(token))
        if self.constraint is not None:
            self.constraint.consume(token)
        if self.stops.stopped:
            self.finish_reason = "stop"
        elif self.constraint is not None and self.constraint.done:
            # The grammar is complete (the JSON closed): the model could only end its turn.
            self.finish_reason = "stop"
            text += self.stops.feed(self.detok.flush()) + self.stops.flush()
        elif len(self.generated) >= self.max_new:
            self.finish_reason = "length"
            text += self.stops.feed(self.detok.flush()) + self.stops.flush()
        return StepOutput(self.index, token, text, self.finish_reason)
