"""Tool calls streamed as they are written: OpenAI's `delta.tool_calls` pieces from a growing answer.

A streaming client wants the call's name as soon as it is known and its arguments as they
grow, not the whole call at the end. `ToolCallStream.feed` takes each new piece of text and
returns the content that is safe to show and the call deltas that became known; `finish`
reconciles with the whole-answer parser (tool_calls.py, the single source of truth), sending
any call the incremental scanner could not follow (built-in `brave_search.call(...)`, calls
whose arguments come before their name) in one piece.

The scanner follows the JSON dialects only: a bare object (Llama 3.1, several separated by
";"), `<tool_call>{...}</tool_call>` / `<tool_call>[{...}, ...]</tool_call>` (Hermes, SmolLM2),
and `<function=NAME>{...}</function>`. Arguments are forwarded as the model wrote them (their
concatenation is the JSON text of the arguments object).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from llamita.tokenizer.tool_calls import ToolCall, make_tool_call

# Text that opens a call the scanner follows (JSON), at the start of an answer or, for the
# tag, after other content; text that opens one it does not follow, held back until the end.
_SCANNED_OPENERS = ("<tool_call>", "{", "[")
_HELD_OPENERS = ("<function=", "brave_search.call", "wolfram_alpha.call")
_TAGS = ("<tool_call>", "<function=")
_ARGUMENT_KEYS = ("arguments", "parameters")


@dataclass
class ToolCallDelta:
    """One piece of one call: the first piece of a call carries its id and name."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def as_openai(self) -> dict[str, object]:
        function: dict[str, object] = {"arguments": self.arguments}
        out: dict[str, object] = {"index": self.index}
        if self.id is not None:
            out.update(id=self.id, type="function")
            function = {"name": self.name, **function}
        out["function"] = function
        return out


class _JsonCallScanner:
    """Reads JSON text character by character and reports, for every call object in it
    ({"name": ..., "arguments" | "parameters": {...}}), its name once the string closes and
    the characters of its arguments object as they come. Anything outside JSON values
    (`</tool_call>`, ";", whitespace) is skipped, so consecutive calls are followed too."""

    def __init__(self, call_depth: int) -> None:
        self.call_depth = call_depth  # open containers around a call's keys: 1 bare, 2 in a list
        self.stack: list[str] = []
        self.in_string = self.escape = self.expect_key = False
        self.string = ""
        self.key: str | None = None
        self.args_depth: int | None = None  # depth at which the arguments object opened

    def feed(
        self, text: str, on_name: Callable[[str], None], on_args: Callable[[str], None], on_call_end: Callable[[], None]
    ) -> None:
        for ch in text:
            if self.args_depth is not None:
                on_args(ch)
            if self.in_string:
                self._string_char(ch, on_name)
            elif ch == '"':
                self.in_string, self.string = True, ""
            elif ch in "{[":
                self.stack.append(ch)
                if (
                    ch == "{"
                    and self.args_depth is None
                    and len(self.stack) == self.call_depth + 1
                    and self.key in _ARGUMENT_KEYS
                ):
                    self.args_depth = len(self.stack)
                    on_args(ch)
                self.expect_key = ch == "{"
            elif ch in "}]" and self.stack:
                depth = len(self.stack)
                self.stack.pop()
                if self.args_depth == depth:
                    self.args_depth = None
                elif depth == self.call_depth and ch == "}":
                    self.key = None
                    on_call_end()
            elif ch == "," and self.stack:
                self.expect_key = self.stack[-1] == "{"

    def _string_char(self, ch: str, on_name: Callable[[str], None]) -> None:
        if self.escape:
            self.escape = False
        elif ch == "\\":
            self.escape = True
        elif ch == '"':
            self.in_string = False
            if self.expect_key:
                self.expect_key = False
                if len(self.stack) == self.call_depth:
                    self.key = self.string
            elif len(self.stack) == self.call_depth and self.key == "name":
                on_name(_json_string(self.string))
            return
        self.string += ch


class ToolCallStream:
    """Feed an answer's text as it grows; get content to show and tool-call deltas."""

    def __init__(self) -> None:
        self.text = ""  # the whole answer so far
        self.buffer = ""  # text neither shown nor given to the scanner yet
        self.shown = ""  # content sent so far (always a prefix of `text`)
        self.mode = "start"  # start -> content | calls (scanned) | held (sent at the end)
        self.after_tag = False  # Llama's <|python_tag|> was written
        self.scanner: _JsonCallScanner | None = None
        self.calls: list[ToolCall] = []  # calls begun so far
        self._open: ToolCall | None = None  # the call whose arguments are being written
        self._pending_name: str | None = None  # name of the object being read, not begun yet
        self._early_args = ""  # its arguments so far, before it began

    def feed(self, text: str, *, python_tag: bool = False) -> tuple[str, list[ToolCallDelta]]:
        """Content to show and call deltas, after `text` more of the answer. python_tag: the
        model wrote Llama's <|python_tag|> (the streamed text drops it): what follows is a
        call (scanned if JSON) or code (held for the end)."""
        self.text += text
        self.buffer += text
        if python_tag and self.mode in ("start", "content"):
            self.mode, self.after_tag = "start", True
        content = ""
        deltas: list[ToolCallDelta] = []
        while self.mode in ("start", "content") and self.buffer:
            if self.mode == "start":
                head = self.buffer.lstrip()
                if not head:
                    break
                if any(head.startswith(o) for o in _SCANNED_OPENERS[self.after_tag :]):
                    if not self._scan(head):
                        break
                elif self.after_tag or any(head.startswith(o) for o in _HELD_OPENERS):
                    self.mode = "held"
                elif any(o.startswith(head) for o in _SCANNED_OPENERS + _HELD_OPENERS):
                    break  # could still become a call: wait for more text
                else:
                    self.mode = "content"
                continue
            start, tag = _tag_in(self.buffer)
            content += self.buffer[:start]
            self.buffer = self.buffer[start:]
            if tag == "<tool_call>":
                self._scan(self.buffer)
            elif tag is not None:
                self.mode = "held"
            break  # no tag, a tag's start held back at the end, or the scanner takes over
        if self.mode == "calls" and self.buffer:
            assert self.scanner is not None
            text, self.buffer = self.buffer, ""
            self.scanner.feed(
                text, lambda name: self._name(name, deltas), lambda ch: self._argument(ch, deltas), self._end
            )
        self.shown += content
        return content, _merge(deltas)

    def _scan(self, text: str) -> bool:
        """Hand `text` (a call opening) to a new scanner; False while a `<tool_call>` has
        no body yet (a list or an object: the scanner needs to know which)."""
        body = text.removeprefix("<tool_call>").lstrip()
        if not body:
            return False
        self.mode = "calls"
        self.scanner = _JsonCallScanner(call_depth=2 if body.startswith("[") else 1)
        self.buffer = body
        return True

    def _name(self, name: str, deltas: list[ToolCallDelta]) -> None:
        # A call begins once it has a name *and* its arguments object has opened, so a plain
        # JSON answer such as {"name": "Ana"} never shows up as a call.
        self._pending_name = name
        if self._early_args:
            self._start(deltas)

    def _argument(self, ch: str, deltas: list[ToolCallDelta]) -> None:
        if self._open is None:
            self._early_args += ch
            if self._pending_name is not None:
                self._start(deltas)
            return
        self._open["function"]["arguments"] += ch
        deltas.append(ToolCallDelta(len(self.calls) - 1, ch))

    def _start(self, deltas: list[ToolCallDelta]) -> None:
        assert self._pending_name is not None
        call = make_tool_call(self._pending_name, {})
        call["function"]["arguments"] = self._early_args
        self.calls.append(call)
        self._open = call
        deltas.append(ToolCallDelta(len(self.calls) - 1, self._early_args, call["id"], self._pending_name))
        self._early_args = ""

    def _end(self) -> None:
        self._open, self._pending_name, self._early_args = None, None, ""

    def finish(self, content: str, calls: list[ToolCall]) -> tuple[str, list[ToolCallDelta]]:
        """Close the stream with the whole-answer parse (`content`, `calls` from
        find_tool_calls): the content not shown yet, and the calls not streamed, whole.

        Calls already streamed stand even where the whole-answer parser would disagree (e.g.
        Llama 3.2's `{...}; {...}` without <|python_tag|>): the client has them."""
        if not calls and not self.calls:
            content = self.text  # no call after all: everything held back is content
        elif not calls:
            content = ""
        rest = content[len(self.shown) :] if content.startswith(self.shown) else ""
        deltas = []
        for call in calls[len(self.calls) :]:
            self.calls.append(call)
            fn = call["function"]
            deltas.append(ToolCallDelta(len(self.calls) - 1, fn["arguments"], call["id"], fn["name"]))
        self.shown += rest
        self.buffer = ""
        return rest, deltas


def _json_string(body: str) -> str:
    """The value of a JSON string literal's body (escapes resolved; a bad escape kept as is)."""
    try:
        value: str = json.loads(f'"{body}"')  # a JSON string literal reads as a str
        return value
    except ValueError:
        return body


def _tag_in(text: str) -> tuple[int, str | None]:
    """Where a tag opens in `text` and which; a `<` at the end that may still become a tag
    counts too (tag None). No tag: (len(text), None)."""
    i = text.find("<")
    while i >= 0:
        tail = text[i:]
        for tag in _TAGS:
            if tail.startswith(tag):
                return i, tag
        if any(tag.startswith(tail) for tag in _TAGS):
            return i, None
        i = text.find("<", i + 1)
    return len(text), None


def _merge(deltas: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """Join consecutive argument pieces of the same call into one delta."""
    out: list[ToolCallDelta] = []
    for d in deltas:
        if out and d.id is None and out[-1].index == d.index:
            out[-1].arguments += d.arguments
        else:
            out.append(d)
    return out
