"""What a created model (`llamita create`, Ollama's Modelfile) adds to its weights: default
sampling parameters, a system prompt, messages put before every conversation, a chat template,
LoRA adapters and license texts. Stored in the model's manifest; the loader hands them to the
LLM, which applies them (api/llm.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llamita.sampling_params import OLLAMA_OPTIONS, ollama_num_predict

MESSAGE_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ModelSettings:
    """A created model's settings. `parameters` keeps Ollama's names and typed values (stop:
    a tuple of strings); `adapters` are absolute paths (GGUF LoRA files or PEFT folders);
    `messages` are {"role", "content"} dicts."""

    parameters: Mapping[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    messages: tuple[dict[str, str], ...] = ()
    adapters: tuple[str, ...] = ()
    license: tuple[str, ...] = ()

    def layered_over(self, base: ModelSettings | None) -> ModelSettings:
        """These settings on top of `base`'s (a created model made FROM another): a parameter,
        system, template or license given here wins; messages given here replace the base's;
        adapters add up (the base's first)."""
        if base is None:
            return self
        return ModelSettings(
            {**base.parameters, **self.parameters},
            self.system if self.system is not None else base.system,
            self.template if self.template is not None else base.template,
            self.messages or base.messages,
            base.adapters + self.adapters,
            self.license or base.license,
        )

    def sampling_kwargs(self) -> dict[str, Any]:
        """The PARAMETERs llamita honours, as SamplingParams keyword arguments (Ollama's names
        translated: repeat_penalty -> repetition_penalty, num_predict -> max_tokens...)."""
        kw = {OLLAMA_OPTIONS[k]: v for k, v in self.parameters.items() if k in OLLAMA_OPTIONS}
        if "num_predict" in self.parameters:
            kw["max_tokens"] = ollama_num_predict(self.parameters["num_predict"])
        return kw

    @property
    def num_ctx(self) -> int | None:
        """The context window PARAMETER num_ctx asks for, or None."""
        value = self.parameters.get("num_ctx")
        return value if isinstance(value, int) else None

    def conversation(self, messages: Sequence[Any]) -> list[Any]:
        """`messages` as the model sees them: SYSTEM first when the conversation brings no
        system message of its own, then the MESSAGEs, then the conversation (Ollama's order)."""
        head: list[Any] = []
        has_system = any(isinstance(m, Mapping) and m.get("role") == "system" for m in messages)
        if self.system is not None and not has_system:
            head.append({"role": "system", "content": self.system})
        leading = 0  # the conversation's own system messages stay first
        while (
            leading < len(messages)
            and isinstance(messages[leading], Mapping)
            and messages[leading].get("role") == "system"
        ):
            leading += 1
        return [*head, *messages[:leading], *(dict(m) for m in self.messages), *messages[leading:]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's `settings`)."""
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.parameters.items()}
        return {
            "parameters": params,
            "system": self.system,
            "template": self.template,
            "messages": [dict(m) for m in self.messages],
            "adapters": list(self.adapters),
            "license": list(self.license),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSettings:
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in (data.get("parameters") or {}).items()}
        return cls(
            params,
            data.get("system"),
            data.get("template"),
            tuple(dict(m) for m in data.get("messages") or ()),
            tuple(data.get("adapters") or ()),
            tuple(data.get("license") or ()),
        )
