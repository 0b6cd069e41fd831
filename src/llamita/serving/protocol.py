"""The request bodies of the OpenAI and Ollama routes as pydantic models (as vLLM's
entrypoints/openai/protocol.py declares them): each route validates its body against its model
right after reading it (`parse_body`) and declares it for /openapi.json (serving/openapi.py,
request_body), so the published limits are the ones enforced.

The models check types, ranges and the shape of nested objects, and name the field path of what
is wrong (`messages[1].content`, in OpenAI's error shape: serving/errors.py, validation_error).
Rules between fields (`top_logprobs` needs `logprobs`, one grammar at most, a forced tool call
needs tools) and checks that need the model (token ids, templates, adapters) stay in the routes
and in SamplingParams, which also name the field. Once checked, the routes read the body as
the JSON object it came as (serving/params.py maps it onto SamplingParams).

The whole (non-streamed) chat and text completion answers are models too, at the end: what
/openapi.json says they hold.

Types are as lenient as the hand-written checks were: unknown fields are accepted (clients send
many; a field llamita refuses is refused by name in the route), null means absent, an integer is
a number, but a string is never a number nor a number a boolean (pydantic's strict mode).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from llamita.engine.conversation import ROLES
from llamita.rag.answer import LANGUAGES
from llamita.rag.collection import MODES
from llamita.sampling_params import MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_SEED
from llamita.serving.errors import validation_error

MAX_N = 16  # most choices one request may ask for
MAX_COLLECTIONS = 16  # most collections one chat request may answer from
MAX_TOP = 20  # most chunks retrieved for one answer

# Unknown fields accepted; strict types (no "1" for 1, no true for 1), ints for floats.
_OPEN = ConfigDict(extra="allow", strict=True)

Number = Annotated[float, Field(allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
TokenId = Annotated[int, Field(ge=0)]
# Ollama's keep_alive: a Go duration ("5m", "1h30m", "-1") or seconds; 0 unloads, negative keeps.
KeepAlive = str | Number
# OpenAI's prompt and embedding input: a string, strings, token ids, or lists of token ids.
Prompt = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[TokenId], Field(min_length=1)]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
)


class ContentPart(BaseModel):
    """A part of a message's content; only text parts are read (others are refused by name)."""

    model_config = _OPEN
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """A system, developer, user or assistant message: text, or a list of content parts (an
    assistant's with tool_calls may have none)."""

    model_config = _OPEN
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ToolMessage(BaseModel):
    """A tool's result: any JSON value (templates render it as JSON) or content parts."""

    model_config = _OPEN
    role: Literal["tool", "ipython"]
    content: Any = None
    name: str | None = None
    tool_call_id: str | None = None


def _message_kind(value: Any) -> str:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return "tool" if role in ("tool", "ipython") else "chat"


assert set(ROLES) == {"system", "developer", "user", "assistant", "tool", "ipython"}, "update the message models"
Message = Annotated[
    Annotated[ChatMessage, Tag("chat")] | Annotated[ToolMessage, Tag("tool")], Discriminator(_message_kind)
]
Messages = Annotated[list[Message], Field(min_length=1)]


class FunctionName(BaseModel):
    model_config = _OPEN
    name: str


class NamedFunction(BaseModel):
    """tool_choice forcing one function: {"type": "function", "function": {"name": ...}}."""

    model_config = _OPEN
    type: Literal["function"] = "function"
    function: FunctionName


class RagSettings(BaseModel):
    """llamita's `rag`: how to search the request's `collections` (serving/rag_chat.py)."""

    model_config = _OPEN
    top: Annotated[int, Field(ge=1, le=MAX_TOP)] | None = None
    mode: Literal[MODES] | None = None  # type: ignore[valid-type]  # a tuple of literals
    language: Literal[LANGUAGES] | None = None  # type: ignore[valid-type]  # a tuple of literals


class Collections(BaseModel):
    """llamita's fields to answer a chat from document collections."""

    model_config = _OPEN
    collections: (
        Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_COLLECTIONS)] | None
    ) = None
    rag: RagSettings | None = None


class ModelChoice(BaseModel):
    """Which model answers (loaded on demand) and how long it stays loaded afterwards."""

    model_config = _OPEN
    model: str | None = None
    keep_alive: KeepAlive | None = None
    lora: str | None = None  # a LoRA adapter the server holds (also "model": "base+NAME")


class ChatStreamOptions(BaseModel):
    model_config = _OPEN
    include_usage: bool | None = None


class ResponseFormat(BaseModel):
    """`response_format`: text, any JSON object (with llama.cpp's optional `schema`), or JSON
    under `json_schema.schema`."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_object_schema: dict[str, Any] | None = Field(None, alias="schema")
    json_schema: dict[str, Any] | None = None


class OpenAISampling(ModelChoice):
    """Fields /v1/chat/completions and /v1/completions share. Defaults are SamplingParams'
    (llama.cpp's), not OpenAI's."""

    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1)] | None = None  # llama.cpp's name of penalty_last_n
    penalty_last_n: Annotated[int, Field(ge=-1)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool | None = None
    # Keys are token ids written as strings.
    logit_bias: dict[str, Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    # llama.cpp's name of max_tokens: -1 (no limit) and -2 (fill the context) end at the window.
    n_predict: Annotated[int, Field(ge=-2)] | None = None
    stream: bool | None = None
    stream_options: ChatStreamOptions | None = None
    response_format: ResponseFormat | str | None = None  # some clients send the bare type
    json_schema: dict[str, Any] | None = None  # llama.cpp's: a JSON Schema the answer follows
    grammar: str | None = None  # llama.cpp's: GBNF text the answer follows


class ChatCompletionRequest(OpenAISampling, Collections):
    """POST /v1/chat/completions."""

    messages: Messages
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    continue_final_message: bool | None = None  # vLLM's assistant prefill
    add_generation_prompt: bool | None = None


class CompletionRequest(OpenAISampling):
    """POST /v1/completions (OpenAI's legacy text completion)."""

    prompt: Prompt
    max_tokens: Annotated[int, Field(ge=0)] | None = None  # 0 with echo: score the prompt only
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None  # alternatives per token
    best_of: Annotated[int, Field(ge=1)] | None = None
    suffix: str | None = None


class EmbeddingRequest(ModelChoice):
    """POST /v1/embeddings."""

    input: Prompt
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None


class OllamaOptions(BaseModel):
    """Ollama's `options`; those that only say how to use the hardware are accepted and
    unused, a sampling option llamita lacks is refused by name (serving/params.py)."""

    model_config = _OPEN
    num_predict: Annotated[int, Field(ge=-2)] | None = None
    num_ctx: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Probability | None = None
    repeat_penalty: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = None


class OllamaRequest(ModelChoice):
    """What /api/chat and /api/generate share."""

    stream: bool | None = None
    options: OllamaOptions | None = None
    format: Literal["json", ""] | dict[str, Any] | None = None  # "json" or a JSON Schema


class OllamaChatRequest(OllamaRequest, Collections):
    """POST /api/chat; no messages only loads the model (with keep_alive 0: unloads it)."""

    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None


class OllamaGenerateRequest(OllamaRequest):
    """POST /api/generate; no prompt only loads the model (with keep_alive 0: unloads it)."""

    prompt: str | None = None
    system: str | None = None
    raw: bool | None = None


class OllamaEmbedRequest(ModelChoice):
    """POST /api/embed."""

    input: Prompt
    truncate: bool | None = None


class OllamaEmbeddingsRequest(ModelChoice):
    """POST /api/embeddings (Ollama's first embeddings route: one prompt)."""

    prompt: str


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: dict[str, Any]) -> M:
    """`body` (a JSON object) validated against `model`; a 400 naming the field otherwise."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise validation_error(e.errors(), body, prefix=()) from None


# ------------------------------------------------------------------------------- responses
# The whole (non-streamed) answers of /v1/chat/completions and /v1/completions, as
# serving/openai_format.py builds them: published in /openapi.json, checked against real
# answers in the tests (extra="forbid": a field added to one and not the other fails them).

_CLOSED = ConfigDict(extra="forbid")


class CachedTokens(BaseModel):
    model_config = _CLOSED
    cached_tokens: int


class Usage(BaseModel):
    """Token counts; each prompt counts once although n choices ran on it (OpenAI's rule)."""

    model_config = _CLOSED
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: CachedTokens


class FunctionCall(BaseModel):
    model_config = _CLOSED
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    model_config = _CLOSED
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(BaseModel):
    """The answer; content is null when the model only called tools. `sources`: llamita's,
    the numbered chunks of an answer from `collections`."""

    model_config = _CLOSED
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | None = None
    sources: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    model_config = _CLOSED
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None  # {"content": [{token, logprob, bytes, top_logprobs}]}
    finish_reason: str | None


class ChatCompletion(BaseModel):
    """The whole answer of POST /v1/chat/completions (stream: false)."""

    model_config = _CLOSED
    id: str
    object: Literal["chat.completion"]
    created: int  # Unix seconds
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: None


class TextChoice(BaseModel):
    model_config = _CLOSED
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None  # {tokens, token_logprobs, top_logprobs, text_offset}


class TextCompletion(BaseModel):
    """The whole answer of POST /v1/completions (stream: false)."""

    model_config = _CLOSED
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    system_fingerprint: None
