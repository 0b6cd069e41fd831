"""The body of POST /v1/responses (OpenAI's Responses API) as pydantic models, and its turning
into what the chat route takes: chat messages, chat-style tools and tool_choice, a
response_format. The route validates the body against these models (errors in OpenAI's shape
naming the field: serving/errors.py, validation_error) and /openapi.json publishes their schema.

Shapes follow the `openai` SDK's `types/responses` (EasyInputMessageParam, FunctionToolParam,
ResponseFunctionToolCallParam, FunctionCallOutput, ResponseTextConfigParam). Fields that would
change the answer and that llamita cannot honour are refused, never ignored: an unknown field,
a tool other than a function, an input item other than a message, a function call or its output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from llamita.engine.conversation import Message, content_text

# Input items keep fields the SDK may send back from an earlier output (id, status, phase,
# annotations...): they describe the item, they do not ask for anything.
_ITEM = ConfigDict(extra="ignore")


class MessageItem(BaseModel):
    """A message: text, or a list of input_text / output_text parts."""

    model_config = _ITEM
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]


class FunctionCallItem(BaseModel):
    """A function call the model made (an earlier output item, sent back)."""

    model_config = _ITEM
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(BaseModel):
    """What the client's function returned for call `call_id`."""

    model_config = _ITEM
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[dict[str, Any]]


def _item_type(value: Any) -> str:
    # A message may omit "type" (EasyInputMessageParam).
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) else "message"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_type),
]


class FunctionTool(BaseModel):
    """A function the model may call; Responses tools are flat (no "function" wrapper)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    """text.format: plain text, any JSON object, or JSON valid under `schema`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise PydanticCustomError("missing", "Field required: a 'json_schema' format needs 'schema'")
        return self


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # a hint; no model here reads it


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_obfuscation: bool | None = None  # llamita never pads events, so either value holds


class ResponsesRequest(BaseModel):
    """POST /v1/responses. Sampling defaults are llamita's (SamplingParams'), as on
    /v1/chat/completions."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[FunctionTool] = []
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice = "auto"
    parallel_tool_calls: bool | None = None  # the model writes as many calls as it writes
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    text: TextConfig | None = None
    # Said of the request, not asked of the model: kept in the response (metadata) or unused.
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # llamita's prefix cache needs no key
    service_tier: str | None = None
    # Accepted only where they ask for nothing llamita lacks: these models do not reason, so a
    # reasoning effort and its encrypted content have nothing to apply to.
    reasoning: dict[str, Any] | None = None
    include: list[Literal["reasoning.encrypted_content"]] | None = None
    truncation: Literal["disabled"] | None = None
    background: Literal[False] | None = None
    top_logprobs: Literal[0] | None = None

    def chat_tools(self) -> dict[str, Any]:
        """tools and tool_choice as /v1/chat/completions takes them."""
        tools = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in self.tools
        ]
        choice: Any = self.tool_choice
        if isinstance(choice, FunctionChoice):
            choice = {"type": "function", "function": {"name": choice.name}}
        return {"tools": tools, "tool_choice": choice}

    def response_format(self) -> dict[str, Any] | None:
        """text.format as chat's response_format."""
        spec = self.text.format if self.text else None
        if spec is None or spec.type == "text":
            return None
        if spec.type == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": spec.name, "schema": spec.json_schema}}


def input_messages(items: str | list[Any], earlier: Sequence[Message] = ()) -> list[Message]:
    """The request's `input` as chat messages. A function call joins the assistant message
    before it (chat's tool_calls); a function's output is a "tool" message named after its call,
    found in `input` or in the `earlier` conversation (previous_response_id's)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[Message] = []
    names = {call["id"]: call["function"]["name"] for m in earlier for call in m.get("tool_calls") or ()}
    for i, item in enumerate(items):
        if isinstance(item, MessageItem):
            content = (
                item.content if isinstance(item.content, str) else content_text(item.content, f"input[{i}].content")
            )
            messages.append({"role": item.role, "content": content})
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last["tool_calls"] = [*last.get("tool_calls", []), call]
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            output = item.output if isinstance(item.output, str) else content_text(item.output, f"input[{i}].output")
            message: Message = {"role": "tool", "tool_call_id": item.call_id, "content": output}
            if item.call_id in names:
                message["name"] = names[item.call_id]
            messages.append(message)
    return messages
