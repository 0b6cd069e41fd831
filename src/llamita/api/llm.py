"""`LLM`: the Python API. Load a model once, then generate from text prompts or chats."""

from __future__ import annotations

import collections.abc
import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import torch

from llamita.engine.conversation import Message
from llamita.engine.llm_engine import DEFAULT_BLOCK_SIZE, GenerationStats, LLMEngine, RequestOutput, TokenLogprob
from llamita.engine.loader import LoadedModel, load_model
from llamita.engine.lora_attach import attach_loras
from llamita.engine.prompts import encode_chat, encode_prompt
from llamita.engine.step_builder import CompileMode, compile_mode, decode_label
from llamita.errors import ContextOverflowError, InvalidParameterError
from llamita.model.compiled import compile_blocker
from llamita.sampling_params import SamplingParams
from llamita.tokenizer.tool_calls import find_tool_calls


@dataclass
class GenerationOutput:
    """One finished completion.

    With tools offered to `LLM.chat`, calls the model wrote are in `tool_calls` (OpenAI form:
    {"id", "type": "function", "function": {"name", "arguments": JSON string}}), `text` is what
    it wrote around them, and `finish_reason` is "tool_calls".
    """

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS / end of turn / stop string), "length" or "tool_calls"
    prompt_token_ids: list[int]
    stats: GenerationStats = field(default_factory=GenerationStats)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # One per generated token when SamplingParams.logprobs is set (its top alternatives too).
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class StreamChunk:
    """A piece of a completion as it is generated; `finish_reason` is set on the last one."""

    text: str
    token_id: int | None
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # token_id's, with SamplingParams.logprobs


class LLM:
    """A loaded model with its tokenizer and chat template.

    >>> llm = LLM()                                   # the embedded SmolLM2-135M-Instruct
    >>> llm = LLM("llama3.2:1b")                      # a library name (`llamita pull` first)
    >>> llm.chat([{"role": "user", "content": "What is the capital of France?"}],
    ...          SamplingParams(temperature=0)).text
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        lora: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        gpu_layers: int | None = None,
        compile: bool | None = None,
    ) -> None:
        """lora: LoRA adapters (PEFT folders or GGUF LoRA files, each `PATH[:SCALE]`), applied
        together to every generation without merging them into the weights.
        gpu_layers: on CUDA, only the first N blocks on the GPU, the rest on the CPU.
        compile: how generations decode (engine/step_builder.py); they run on the server's
        engine (engine/llm_engine.py, `engine`). None (default, or $LLAMITA_COMPILE): through
        the AOTInductor-compiled paged step (model/compiled_paged.py) if this model shape's
        package is built, else eagerly while a background process (started by the first
        generation) builds the one-row package, for the next LLM or this one's next steps (a
        batch uses the many-row package when a server or `bench -b` has built it); True
        (LLAMITA_COMPILE=1): build the one-row step now in the foreground (1-2 minutes on 2
        cores, once; the many-row one at the first batch); False (LLAMITA_COMPILE=0): eager. Eager with LoRA, gpu_layers or on CUDA (`compile_skipped`
        says why); `decode_path` says which path runs.
        A created model (`llamita create`) brings its settings: its ADAPTERs join `lora`, its
        PARAMETERs are the default SamplingParams, its SYSTEM and MESSAGEs go before every chat
        (`settings`)."""
        loaded = load_model(model, dtype=dtype, device=device, gpu_layers=gpu_layers)
        specs = [lora] if isinstance(lora, (str, os.PathLike)) else list(lora or [])
        if loaded.settings is not None:
            specs = [*loaded.settings.adapters, *specs]
        names = attach_loras(loaded.model, loaded.config, specs, combine=True)
        self._attach(loaded, loaded.model.lora.slot(names[0]) if names else None, compile_mode(compile))

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, adapter: str | None = None) -> LLM:
        """An LLM over a model already loaded (the server's, for the glass views; a
        tensor-parallel rank 0's); shares it. adapter: the name of an installed LoRA slot every
        generation runs with."""
        llm = cls.__new__(cls)
        llm._attach(loaded, None if adapter is None else loaded.model.lora.slot(adapter))
        return llm

    def _attach(self, loaded: LoadedModel, adapter: int | None = None, mode: CompileMode = "off") -> None:
        self.loaded = loaded
        # A created model's settings (library/settings.py), or None.
        self.settings = loaded.settings
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self._mode = mode
        # The LoRA adapter every generation runs with (its slot name), or None.
        self.adapter = None if adapter is None else loaded.model.lora.names[adapter]
        # Why the compiled step is not used (a LoRA adapter, layers split), else None.
        self.compile_skipped = None if mode == "off" else compile_blocker(loaded.model)
        # The engine generations run on, made at the first one (an LLM that only embeds or
        # scores, as the server's glass views make them, holds no KV cache and builds nothing).
        self._engine: LLMEngine | None = None
        self._stats = GenerationStats()
        if mode == "foreground" and self.compile_skipped is None:
            self._engine = self._make_engine()  # builds the one-row step now: the common case

    @property
    def engine(self) -> LLMEngine:
        """The continuous-batching engine every generation of this LLM runs on (the server's
        kind: paged KV cache, compiled step, prefix cache), made at first use; its KV cache
        grows to what a call needs."""
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> LLMEngine:
        return LLMEngine(
            self.loaded,
            kv_cache_tokens=2 * DEFAULT_BLOCK_SIZE,  # grown by each call to what it needs
            max_running=1,
            compile=None if self._mode == "background" else self._mode == "foreground",
            compile_rows=(1,),
        )

    @property
    def builder(self) -> subprocess.Popen[bytes] | None:
        """The background process this LLM started to build its compiled step, if any: at its
        first generation or `decode_path`."""
        return None if self._engine is None else self._engine.builder

    @property
    def decode_path(self) -> str:
        """How one token of a one-prompt generation is made, for a status line: "compiled
        step" (AOTInductor), "eager", or "eager (why: building in the background, a failed
        build, LoRA...)". A package a background builder finished is picked up here; without
        one, reading this starts the builder (as the first generation would), since a status
        line announces the path a generation is about to take."""
        engine = self.engine
        return decode_label(engine.compiled, engine.compile_skipped)

    def adapter_rows(self, batch: int = 1) -> torch.Tensor | None:
        """The `adapters` argument of a forward pass over `batch` rows that runs this LLM's
        LoRA adapter (its slot on every row), or None without one: what the glass views pass
        to the model so that they show what the generations run."""
        if self.adapter is None:
            return None
        slot = self.loaded.model.lora.slot(self.adapter)
        return torch.full((batch,), slot, dtype=torch.int64, device=self.loaded.model.device)

    def sampling_params(self, defaults: Mapping[str, Any] | None = None, **explicit: Any) -> SamplingParams:
        """SamplingParams for this model, in layers: `defaults` (a front end's own, e.g. chat's
        longer answers), then a created model's PARAMETERs, then the `explicit` fields that are
        not None (a command line's flags)."""
        model = self.settings.sampling_kwargs() if self.settings is not None else {}
        given = {k: v for k, v in explicit.items() if v is not None}
        return SamplingParams(**{**(defaults or {}), **model, **given})

    @property
    def context_length(self) -> int:
        """The window a generation runs in (prompt plus generated tokens): the model's, or a
        created model's PARAMETER num_ctx when that is smaller."""
        num_ctx = self.settings.num_ctx if self.settings is not None else None
        return min(self.config.context_length, num_ctx) if num_ctx else self.config.context_length

    def _fitted(self, ids: list[int], params: SamplingParams) -> SamplingParams:
        """`params` for a prompt of `ids` inside `context_length` (a num_ctx smaller than the
        model's window): max_tokens no larger than the room left."""
        if self.context_length >= self.config.context_length:
            return params  # the generator already stops at the model's window
        room = self.context_length - len(ids)
        if room < 1:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens but the model's num_ctx is "
                f"{self.context_length} (prompt plus at least one generated token)"
            )
        return (
            params if params.max_tokens is not None and params.max_tokens <= room else params.replace(max_tokens=room)
        )

    @property
    def last_stats(self) -> GenerationStats:
        """Token counts and timings of the most recent generation."""
        return self._stats

    # -- prompts -> token ids -------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        """Plain-text prompt -> ids: BOS if the model wants one; control-token strings in the
        text stay plain text."""
        return encode_prompt(self.tokenizer, prompt)

    def encode_chat(
        self, messages: Sequence[Message], *, tools: Sequence[dict[str, Any]] | None = None, **template_kwargs: Any
    ) -> list[int]:
        """Chat messages -> ids through the model's chat template, ready for the assistant.

        tools: OpenAI JSON-schema tool definitions, given to the template as `tools`.
        template_kwargs: more template variables (builtin_tools, date_string, ...).
        A created model's SYSTEM (unless the messages bring a system message) and MESSAGEs
        come first."""
        if self.settings is not None:
            messages = self.settings.conversation(messages)
        return encode_chat(self.tokenizer, messages, tools=tools, **template_kwargs)

    # -- generation -----------------------------------------------------------------------
    # One prompt gives one output, a list of prompts a list: the overloads say so to type checkers.
    # A str is also a Sequence[str]; overloads are tried in order, so this one wins for it.
    @overload
    def generate(  # type: ignore[overload-overlap]
        self,
        prompts: str,
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> GenerationOutput: ...
    @overload
    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[GenerationOutput]: ...
    @overload
    def generate(
        self,
        prompts: None = None,
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        prompt_token_ids: Sequence[int],
    ) -> GenerationOutput: ...
    @overload
    def generate(
        self,
        prompts: None = None,
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        prompt_token_ids: Sequence[Sequence[int]],
    ) -> list[GenerationOutput]: ...

    def generate(
        self,
        prompts: str | Sequence[str] | None = None,
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        prompt_token_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
    ) -> GenerationOutput | list[GenerationOutput]:
        """Complete one prompt (returns one output) or a list of prompts (returns a list, in
        order, generated together as a batch). Prompts are plain text; pass token ids instead
        with `prompt_token_ids`."""
        single, id_lists = self._prompt_ids(prompts, prompt_token_ids)
        outputs = self._run(id_lists, params)
        return outputs[0] if single else outputs

    def generate_stream(
        self,
        prompt: str | None = None,
        params: SamplingParams | None = None,
        *,
        prompt_token_ids: Sequence[int] | None = None,
    ) -> collections.abc.Generator[StreamChunk, None, None]:
        """Like `generate` for one prompt, yielding text as soon as it is safe to show."""
        single, id_lists = self._prompt_ids(prompt, prompt_token_ids)
        if not single:
            raise InvalidParameterError("prompt", "generate_stream takes one prompt")
        yield from self._stream(id_lists[0], params)

    def chat(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> GenerationOutput:
        """Answer OpenAI-style messages ([{"role": "user", "content": "..."}, ...]).

        tools: functions the model may call (OpenAI JSON-schema form); its calls come back
        parsed in `tool_calls`. Feed results back as {"role": "tool", "content": ...} messages
        (api/agent.py's `run_agent` does the whole loop). Llama 3.1's built-in tools are
        offered with `builtin_tools=["brave_search", "wolfram_alpha", "code_interpreter"]`.
        """
        out = self._run([self.encode_chat(messages, tools=tools, **template_kwargs)], params)[0]
        if tools or template_kwargs.get("builtin_tools") is not None:
            self._find_tool_calls(out)
        return out

    def chat_stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> collections.abc.Generator[StreamChunk, None, None]:
        """Streaming form of `chat`. The text is streamed as written: tool calls are not parsed
        (use `parse_tool_calls` on the joined text, or `chat`)."""
        yield from self._stream(self.encode_chat(messages, tools=tools, **template_kwargs), params)

    # -- internals ------------------------------------------------------------------------
    def _find_tool_calls(self, out: GenerationOutput) -> None:
        """Move tool calls written in `out.text` into `out.tool_calls`."""
        content, calls = find_tool_calls(self.tokenizer, out.text, out.token_ids)
        if calls:
            out.text, out.tool_calls, out.finish_reason = content, calls, "tool_calls"

    def _prompt_ids(self, prompts: Any, prompt_token_ids: Any) -> tuple[bool, list[list[int]]]:
        if (prompts is None) == (prompt_token_ids is None):
            raise InvalidParameterError("prompts", "give either text prompts or prompt_token_ids")
        if prompts is not None:
            if isinstance(prompts, str):
                return True, [self.encode_prompt(prompts)]
            prompts = list(prompts)
            if not prompts:
                raise InvalidParameterError("prompts", "the list of prompts is empty")
            return False, [self.encode_prompt(p) for p in prompts]
        ids = list(prompt_token_ids)
        if ids and all(isinstance(t, int) for t in ids):
            return True, [ids]
        if not ids or not all(isinstance(p, Sequence) and all(isinstance(t, int) for t in p) for p in ids):
            raise InvalidParameterError("prompt_token_ids", "must be a list of ints or a list of lists of ints")
        return False, [list(p) for p in ids]

    def _params_for(self, n: int, params: SamplingParams | Sequence[SamplingParams] | None) -> list[SamplingParams]:
        if params is None:  # a created model's PARAMETERs, else SamplingParams' defaults
            return [self.sampling_params()] * n
        if isinstance(params, SamplingParams):
            return [params] * n
        params = list(params)
        if len(params) != n:
            raise InvalidParameterError("params", f"got {len(params)} SamplingParams for {n} prompts")
        return params

    def _run(self, id_lists: list[list[int]], params: Any) -> list[GenerationOutput]:
        texts = [""] * len(id_lists)
        tokens: list[list[int]] = [[] for _ in id_lists]
        reasons = ["length"] * len(id_lists)
        logprobs: list[list[TokenLogprob]] = [[] for _ in id_lists]
        for i, out in self._outputs(id_lists, params):
            texts[i] += out.text
            tokens[i] += out.token_ids
            logprobs[i] += out.logprobs
            if out.finish_reason is not None:
                reasons[i] = out.finish_reason
        stats = self._stats
        return [
            GenerationOutput(t, ids, r, p, stats, logprobs=lp)
            for t, ids, r, p, lp in zip(texts, tokens, reasons, id_lists, logprobs)
        ]

    def _stream(self, ids: list[int], params: SamplingParams | None) -> Iterator[StreamChunk]:
        # closing(): a stream closed early (Ctrl-C in chat) aborts its request in the engine now.
        with contextlib.closing(self._outputs([ids], params)) as outputs:
            yield from self._chunks(outputs)

    @staticmethod
    def _chunks(outputs: Iterator[tuple[int, RequestOutput]]) -> Iterator[StreamChunk]:
        for _, out in outputs:
            if not out.token_ids:  # a step that only closes the sequence (a stop token)
                yield StreamChunk(out.text, None, out.finish_reason)
            for token in out.token_ids:  # one token a step
                yield StreamChunk(out.text, token, out.finish_reason, out.logprobs)

    def _outputs(
        self, id_lists: list[list[int]], params: Any
    ) -> collections.abc.Generator[tuple[int, RequestOutput], None, None]:
        """Run the prompts on the engine: (prompt index, output) per step as they come."""
        plist = [self._fitted(ids, p) for ids, p in zip(id_lists, self._params_for(len(id_lists), params))]
        engine = self.engine
        engine.scheduler.max_running = max(engine.scheduler.max_running, len(id_lists))  # all at once
        self._stats = GenerationStats()
        yield from engine.generate(id_lists, plist, self.adapter, self._stats)
