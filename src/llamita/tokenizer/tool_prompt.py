"""Tools for a chat template that knows nothing about them (e.g. the embedded SmolLM2's).

The conversation is rewritten into plain turns in the Hermes / SmolLM2 convention the model
was tuned on: the tool definitions go into the system message inside `<tools></tools>`, the
model is asked to answer with `<tool_call>[...]</tool_call>`, past calls are written that way
in the assistant's turns, and tool results come back as user turns inside
`<tool_response></tool_response>` (as Qwen's and Ollama's SmolLM2 templates render them).
tool_calls.py parses the answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llamita.tokenizer.tool_calls import arguments_as_dict

TOOLS_SYSTEM_PROMPT = (
    "You can call functions to answer the question. If none of them fits, say so and answer "
    "normally.\n\n"
    "The functions are described in JSON inside <tools></tools>:\n<tools>{tools}</tools>\n\n"
    "To call functions, reply with nothing but a JSON list of calls inside "
    "<tool_call></tool_call>, for example:\n"
    '<tool_call>[{{"name": "function_name", "arguments": {{"argument_name": "value"}}}}]'
    "</tool_call>"
)


def tools_as_text(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Messages with only system/user/assistant turns and string contents.

    tools: OpenAI-style definitions ({"type": "function", "function": {...}}); None or empty
    leaves the system message alone (past calls and results are still written out as text).
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("tool", "ipython"):
            out.append(
                {"role": "user", "content": f"<tool_response>\n{_text(message.get('content'))}\n</tool_response>"}
            )
        elif role == "assistant" and message.get("tool_calls"):
            calls = [_call_json(c) for c in message["tool_calls"]]
            content = _text(message.get("content")).strip()
            written = "<tool_call>[" + ", ".join(calls) + "]</tool_call>"
            out.append({"role": "assistant", "content": f"{content}\n{written}" if content else written})
        else:
            out.append({k: v for k, v in message.items() if k != "tool_calls"})
    if tools:
        prompt = TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(list(tools), ensure_ascii=False))
        if out and out[0].get("role") == "system":
            system = _text(out[0].get("content")).strip()
            out[0] = {**out[0], "content": f"{prompt}\n\n{system}" if system else prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return json.dumps(content, ensure_ascii=False)


def _call_json(call: Any) -> str:
    function = call.get("function", call) if isinstance(call, dict) else {}
    name = function.get("name", "")
    arguments = arguments_as_dict(function.get("arguments", {}))
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
