"""Llama 3.1's chat format in Python, for Llama 3 vocabularies that come without a template
(Meta's original checkpoints ship only `tokenizer.model`).

It writes what the official Hugging Face Llama 3.1 template writes (docs/llama-reference.md §4), token for
token, its quirks included: every prompt has a system block with the knowledge-cutoff and
today's date; custom tools go into the first user message (or the system block with
`tools_in_user_message=False`); built-in tools turn on `Environment: ipython`; a tool result is
passed through JSON, so a string result arrives quoted. The output is a list of parts, each
plain text or one special token, so nothing a message says can become a control token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from typing import Any

from llamita.errors import TemplateError
from llamita.tokenizer.tool_calls import arguments_as_dict

BEGIN_OF_TEXT = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"
PYTHON_TAG = "<|python_tag|>"
# A vocabulary with all of these special tokens can use this format.
SPECIAL_TOKENS = (BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT, EOM, PYTHON_TAG)

KNOWLEDGE_CUTOFF = "December 2023"
_CALL_FORMAT = (
    'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.Do not use variables.\n\n"
)
USER_TOOLS_INSTRUCTION = (
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\n" + _CALL_FORMAT
)
SYSTEM_TOOLS_INSTRUCTION = (
    "You have access to the following functions. To call a function, please respond with JSON "
    "for a function call." + _CALL_FORMAT
)

Part = tuple[str, bool]  # (text, is_special): a special part is exactly one token


def today_string(day: date | None = None) -> str:
    """A date as the template writes it: "26 Jul 2024" (strftime "%d %b %Y")."""
    return (day or date.today()).strftime("%d %b %Y")


def llama3_chat_parts(
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[dict[str, Any]] | None = None,
    custom_tools: Sequence[dict[str, Any]] | None = None,
    builtin_tools: Sequence[str] | None = None,
    tools_in_user_message: bool = True,
    date_string: str | None = None,
    **_unused: Any,
) -> list[Part]:
    """The prompt for OpenAI-style messages, as parts (join the texts for the prompt string).

    tools / custom_tools: JSON-schema tool definitions ({"type": "function", "function": ...}).
    builtin_tools: names among brave_search, wolfram_alpha, code_interpreter.
    date_string: the "Today Date" line; default today (the HF 3.1 template's is "26 Jul 2024").
    Other keyword arguments are ignored, as a Jinja template ignores unknown variables.
    Raises TemplateError where the official template raises.
    """
    if custom_tools is not None:
        tools = custom_tools
    out = _Parts()
    msgs = list(messages)
    system = ""
    if msgs and msgs[0].get("role") == "system":
        system = _trim(msgs.pop(0).get("content"))

    out.special(BEGIN_OF_TEXT)
    out.header("system")
    if builtin_tools is not None or tools is not None:
        out.text("Environment: ipython\n")
    if builtin_tools is not None:
        listed = [t for t in builtin_tools if t != "code_interpreter"]  # implied by ipython
        out.text("Tools: " + ", ".join(listed) + "\n\n")
    out.text(f"Cutting Knowledge Date: {KNOWLEDGE_CUTOFF}\n")
    out.text(f"Today Date: {date_string if date_string is not None else today_string()}\n\n")
    if tools is not None and not tools_in_user_message:
        out.text(SYSTEM_TOOLS_INSTRUCTION + _tool_definitions(tools))
    out.text(system)
    out.special(EOT)

    if tools is not None and tools_in_user_message:
        if not msgs:
            raise TemplateError(
                "the chat template rejected the conversation: cannot put tools in the first "
                "user message when there is no first user message"
            )
        first = _trim(msgs.pop(0).get("content"))
        out.header("user")
        out.text(USER_TOOLS_INSTRUCTION + _tool_definitions(tools) + first)
        out.special(EOT)

    for message in msgs:
        role = message.get("role")
        if role in ("tool", "ipython"):
            out.header("ipython")
            out.text(_tool_result(message.get("content")))
            out.special(EOT)
        elif message.get("tool_calls"):
            _tool_call_turn(out, message["tool_calls"], builtin_tools)
        else:
            out.header(str(role))
            out.text(_trim(message.get("content")))
            out.special(EOT)
    if add_generation_prompt:
        out.header("assistant")
    return out.parts


class _Parts:
    def __init__(self) -> None:
        self.parts: list[Part] = []

    def special(self, token: str) -> None:
        self.parts.append((token, True))

    def text(self, text: str) -> None:
        if text:
            self.parts.append((text, False))

    def header(self, role: str) -> None:
        self.special(START_HEADER)
        self.text(role)
        self.special(END_HEADER)
        self.text("\n\n")


def _trim(content: Any) -> str:
    # Jinja's `trim` on a missing value: the template would print "None"; an empty turn is kinder.
    return "" if content is None else str(content).strip()


def _tool_definitions(tools: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(t, indent=4, ensure_ascii=False) + "\n\n" for t in tools)


def _tool_result(content: Any) -> str:
    # The template's `content is mapping or content is iterable` is true for strings too, so
    # every str, list or dict goes through tojson: a string result arrives JSON-quoted.
    if isinstance(content, (str, list, tuple, dict)):
        return json.dumps(content, ensure_ascii=False)
    return str(content)


def _tool_call_turn(out: _Parts, tool_calls: Sequence[Any], builtin_tools: Sequence[str] | None) -> None:
    if len(tool_calls) != 1:
        raise TemplateError(
            "the chat template rejected the conversation: Llama 3.1 takes one tool call per assistant message"
        )
    call = tool_calls[0]
    function = call.get("function", call) if isinstance(call, dict) else {}
    name = str(function.get("name", ""))
    arguments = arguments_as_dict(function.get("arguments", {}))
    if not isinstance(arguments, dict):
        raise TemplateError(f"the arguments of the call to {name!r} are not a JSON object")
    out.header("assistant")
    if builtin_tools is not None and name in builtin_tools:
        out.special(PYTHON_TAG)
        if name == "code_interpreter" and set(arguments) == {"code"}:
            # Meta's format: the code itself (the HF template would write .call(code="...")).
            out.text(str(arguments["code"]))
        else:
            written = ", ".join(f'{key}="{value}"' for key, value in arguments.items())
            out.text(f"{name}.call({written})")
    else:
        out.text('{"name": "' + name + '", "parameters": ' + json.dumps(arguments, ensure_ascii=False) + "}")
    out.special(EOM if builtin_tools is not None else EOT)
