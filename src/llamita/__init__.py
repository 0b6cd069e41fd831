"""llamita: run, serve and explain Llama models on your own machine.

from llamita import LLM, SamplingParams
llm = LLM()  # the embedded default model
print(llm.chat([{"role": "user", "content": "Hola"}], SamplingParams(temperature=0)).text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__", "run_agent"]

if TYPE_CHECKING:
    from llamita.api.agent import run_agent
    from llamita.api.llm import LLM
    from llamita.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    # Lazy: `import llamita` (e.g. for the CLI's --help) must not pay for importing torch.
    if name == "LLM":
        from llamita.api.llm import LLM

        return LLM
    if name == "SamplingParams":
        from llamita.sampling_params import SamplingParams

        return SamplingParams
    if name == "run_agent":
        from llamita.api.agent import run_agent

        return run_agent
    raise AttributeError(f"module 'llamita' has no attribute {name!r}")
