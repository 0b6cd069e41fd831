"""The glass box over HTTP: POST /glass/tokens, /glass/attention, /glass/next and /glass/lens
answer with the plain-data views of `llamita.glass` for the served model (the web page's
"Inside the model" panel draws them), and POST /glass/sources the attention an answer from
collections paid to each of its sources (rag/explain.py). Views that run the model do it on the engine thread,
between two batch steps, so they never race the requests being generated. They take the
LoRA adapter as generation requests do (`"model": "<base>+NAME"` or `"lora": "NAME"`) and
show the model with it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llamita.api.llm import LLM
from llamita.engine.llm_engine import LLMEngine
from llamita.glass.attention import attention_view
from llamita.glass.common import prompt_ids
from llamita.glass.lens import logit_lens
from llamita.glass.next_token import next_token_view
from llamita.glass.tokens import tokenize_view
from llamita.rag.answer import build_prompt
from llamita.rag.explain import explain
from llamita.serving.errors import APIError
from llamita.serving.protocol import MAX_COLLECTIONS, MAX_TOP
from llamita.serving.rag_chat import hit_of, question_of
from llamita.serving.request_body import field
from llamita.serving.state import ServerState, model_request

# Attention keeps (n_layers, n_heads, S, S) float32 weights: 256 tokens are 70 MB on the
# default model; the square grows fast past that.
MAX_ATTENTION_TOKENS = 256
MAX_TEXT_CHARS = 100_000  # /glass/tokens runs on the event loop: keep one request short
MAX_TEMPERATURES = 64
MAX_TOP_TOKENS = 100
# /glass/sources keeps (n_layers, n_heads, answer, S) weights: 256 answer tokens over a
# 1,700-token prompt are ~470 MB on the default model. A longer answer is cut to its start.
MAX_EXPLAINED_TOKENS = 256

router = APIRouter()


@router.post("/glass/tokens")
async def tokens(request: Request) -> JSONResponse:
    """{"text"} -> its tokens as plain text (no BOS, no template): ids, pieces, byte lengths,
    tokens per word (llamita.glass.tokens.tokenize_view)."""
    state, body = await model_request(request)
    text = _text(body, "text", MAX_TEXT_CHARS)
    return JSONResponse(tokenize_view(state.tokenizer, text))


@router.post("/glass/attention")
async def attention(request: Request) -> JSONResponse:
    """{"text", "raw", "layer", "head", "token", "top"} -> the tokens the model read and the
    (S, S) attention matrix of one layer / head (absent: the average), row i over tokens 0..i;
    attends_to: what `token` (default the last) draws from most."""
    state, body = await model_request(request)
    adapter = state.adapter_of(body)  # the LoRA adapter the request names, or None
    text = _text(body, "text")
    raw = field(body, "raw", bool, False)
    cfg = state.loaded.config
    layer = _index(body, "layer", cfg.n_layers)
    head = _index(body, "head", cfg.n_heads)
    token = field(body, "token", (int, str), -1)
    top = _top(body, 5)
    _check_length(state, "text", text, raw, MAX_ATTENTION_TOKENS)

    def job(engine: LLMEngine) -> dict[str, Any]:
        view = attention_view(
            LLM.from_loaded(engine.loaded, adapter), text, raw=raw, layer=layer, head=head, token=token, top=top
        )
        view.pop("weights")  # every layer and head: the client asks for the one it shows
        return view

    return JSONResponse(await state.loop.call(job))


@router.post("/glass/next")
async def next_token(request: Request) -> JSONResponse:
    """{"prompt", "raw", "temperature" or "temperatures", "top", "top_k", "top_p", "min_p"} ->
    the `top` most likely next tokens and their probabilities at each temperature (and after
    the filters, when one is set). One forward pass serves every temperature."""
    state, body = await model_request(request)
    adapter = state.adapter_of(body)  # the LoRA adapter the request names, or None
    prompt = _text(body, "prompt")
    raw = field(body, "raw", bool, False)
    temperatures = _temperatures(body)
    top = _top(body, 10)
    top_k = field(body, "top_k", int)
    top_p = field(body, "top_p", float)
    min_p = field(body, "min_p", float)
    _check_length(state, "prompt", prompt, raw, state.context_length)

    def job(engine: LLMEngine) -> dict[str, Any]:
        return next_token_view(
            LLM.from_loaded(engine.loaded, adapter),
            prompt,
            raw=raw,
            temperatures=temperatures,
            top=top,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
        )

    return JSONResponse(await state.loop.call(job))


@router.post("/glass/lens")
async def lens(request: Request) -> JSONResponse:
    """{"prompt", "raw", "top"} -> the logit lens: the top tokens read from every layer."""
    state, body = await model_request(request)
    adapter = state.adapter_of(body)  # the LoRA adapter the request names, or None
    prompt = _text(body, "prompt")
    raw = field(body, "raw", bool, False)
    top = _top(body, 1)
    _check_length(state, "prompt", prompt, raw, state.context_length)

    def job(engine: LLMEngine) -> dict[str, Any]:
        return logit_lens(LLM.from_loaded(engine.loaded, adapter), prompt, raw=raw, top=top)

    return JSONResponse(await state.loop.call(job))


@router.post("/glass/sources")
async def sources(request: Request) -> JSONResponse:
    """{"messages" (the conversation up to the question, as the chat request sent it),
    "sources" (as the answer listed them), "answer", "rag": {"language"}} -> each source's
    share of the answer's attention (summed over layers and heads, averaged over the answer's
    tokens), the rest (`other`), and per answer token the share of each source (the heatmap).
    The prompt is rebuilt from the listed sources by the builder the chat used."""
    state, body = await model_request(request)
    adapter = state.adapter_of(body)
    question, history = question_of(field(body, "messages", list, required=True))
    listed = field(body, "sources", list, required=True)
    if not listed or len(listed) > MAX_TOP * MAX_COLLECTIONS or not all(isinstance(s, dict) for s in listed):
        raise APIError(400, "'sources' must be the list of sources the answer came with", param="sources")
    answer = _text(body, "answer")
    language = field(field(body, "rag", dict, {}), "language", str, where="rag.")
    llm = LLM.from_loaded(state.loaded, adapter)
    answer_ids = llm.tokenizer.encode(answer)
    truncated = len(answer_ids) > MAX_EXPLAINED_TOKENS
    answer_ids = answer_ids[:MAX_EXPLAINED_TOKENS]
    hits = [hit_of(s) for s in listed]
    prompt = build_prompt(
        llm,
        question,
        hits,
        language=language,
        answer_tokens=len(answer_ids),
        history=history,
        context_length=state.context_length,
    )
    if len(prompt.sources) != len(hits):
        raise APIError(
            400,
            "the sources and the answer do not fit in the context window together",
            param="sources",
            code="context_length_exceeded",
        )

    def job(engine: LLMEngine) -> dict[str, Any]:
        seen = explain(LLM.from_loaded(engine.loaded, adapter), prompt, answer_ids)
        return {
            "sources": [
                {"index": i, "source": hit.source, "share": share}
                for i, (hit, share) in enumerate(zip(hits, seen.shares), start=1)
            ],
            "retrieved": seen.retrieved,
            "other": seen.other,
            "tokens": seen.answer_pieces,
            "per_token": seen.per_token.tolist(),
            "prompt_tokens": len(prompt.prompt_token_ids),
            "truncated": truncated,
        }

    return JSONResponse(await state.loop.call(job))


def _text(body: dict[str, Any], name: str, max_chars: int | None = None) -> str:
    text: str = field(body, name, str, required=True)
    if not text:
        raise APIError(400, f"'{name}' is empty: give the text to look at", param=name)
    if max_chars is not None and len(text) > max_chars:
        raise APIError(400, f"'{name}' has {len(text)} characters; at most {max_chars}", param=name)
    return text


def _index(body: dict[str, Any], name: str, n: int) -> int | None:
    """A 0-based layer or head; None (absent) means the average over all of them."""
    value: int | None = field(body, name, int)
    if value is not None and not 0 <= value < n:
        raise APIError(400, f"'{name}' must be in 0..{n - 1} (or absent for the average), got {value}", param=name)
    return value


def _top(body: dict[str, Any], default: int) -> int:
    top: int = field(body, "top", int, default)
    if not 1 <= top <= MAX_TOP_TOKENS:
        raise APIError(400, f"'top' must be in 1..{MAX_TOP_TOKENS}, got {top}", param="top")
    return top


def _temperatures(body: dict[str, Any]) -> list[float]:
    if body.get("temperature") is not None and body.get("temperatures") is not None:
        raise APIError(400, "give 'temperature' or 'temperatures', not both", param="temperatures")
    one = field(body, "temperature", float)
    values = [one] if one is not None else field(body, "temperatures", list, [1.0])
    if not 1 <= len(values) <= MAX_TEMPERATURES:
        raise APIError(
            400, f"'temperatures' takes 1..{MAX_TEMPERATURES} values, got {len(values)}", param="temperatures"
        )
    for t in values:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
            raise APIError(400, f"each temperature must be a number >= 0, got {t!r}", param="temperatures")
    return [float(t) for t in values]


def _check_length(state: ServerState, name: str, text: str, raw: bool, limit: int) -> None:
    """400 before the model runs when the text is longer than `limit` tokens."""
    n = len(prompt_ids(LLM.from_loaded(state.loaded), text, raw))
    if n > limit:
        raise APIError(
            400,
            f"'{name}' is {n} tokens (with the chat template unless 'raw'); this view takes at most {limit}",
            param=name,
            code="context_length_exceeded",
        )
