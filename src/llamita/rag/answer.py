"""Answering a question from a collection: the retrieved chunks go into the chat prompt as
numbered sources, as many as the context window holds beside the answer, with instructions
(Spanish or English, after the question's language) to cite them as [1], [2]…; the answer's
citations are read back and checked against the sources."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llamita.api.llm import LLM, StreamChunk
from llamita.engine.conversation import Message
from llamita.errors import ContextOverflowError, InvalidParameterError
from llamita.rag.retrieval import Hit
from llamita.rag.words import STOPWORDS
from llamita.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llamita.rag.collection import Collection

LANGUAGES = ("es", "en")
INSTRUCTIONS = {
    "es": (
        "Responde a la pregunta usando solo las fuentes numeradas. Cita cada afirmación con el "
        "número de su fuente entre corchetes, por ejemplo [1] o [2][3]. Si las fuentes no "
        "contienen la respuesta, dilo. Responde en español."
    ),
    "en": (
        "Answer the question using only the numbered sources. Cite each statement with the "
        "number of its source in square brackets, for example [1] or [2][3]. If the sources "
        "do not contain the answer, say so. Answer in English."
    ),
}
LABELS = {"es": ("Fuentes", "Pregunta"), "en": ("Sources", "Question")}
_SPANISH = frozenset(
    "que el la los las de del en es son un una por para con como cual cuales "
    "cuantos cuantas donde quien se su sus al lo y o pero mas esta este".split()
)
_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def detect_language(text: str) -> str:
    """ "es" or "en" from Spanish marks (¿ ¡ ñ, accented vowels) and function words."""
    if re.search(r"[¿¡ñÑáéíóúÁÉÍÓÚ]", text):
        return "es"
    words = re.findall(r"[a-z]+", text.lower())
    spanish = sum(w in _SPANISH for w in words)
    english = sum(w in STOPWORDS and w not in _SPANISH for w in words)
    return "es" if spanish > english else "en"


def source_label(hit: Hit) -> str:
    """ "file.pdf, p. 3" / "notes.md, Chapter > Section": how a source is shown."""
    name = os.path.basename(hit.source)
    return f"{name}, {hit.location}" if hit.location else name


@dataclass
class AnswerPrompt:
    """The chat to send: `sources` are numbered from 1 in the order the prompt lists them."""

    messages: list[Message]
    sources: list[Hit]
    language: str
    prompt_token_ids: list[int]


@dataclass
class Answer:
    """text: the model's answer; sources: [1] is sources[0]; cited: the source numbers the
    answer cites that exist, in order of first citation; uncited numbers outside 1..len are
    in `invalid_citations`."""

    text: str
    sources: list[Hit]
    language: str
    cited: list[int] = field(default_factory=list)
    invalid_citations: list[int] = field(default_factory=list)
    prompt_token_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


def citations(text: str, n_sources: int) -> tuple[list[int], list[int]]:
    """(valid, invalid) source numbers cited in `text` as [n] or [n, m], each once, in order."""
    found = [int(n) for group in _CITATION.findall(text) for n in re.split(r"\s*[,;]\s*", group)]
    unique = list(dict.fromkeys(found))
    return [n for n in unique if 1 <= n <= n_sources], [n for n in unique if not 1 <= n <= n_sources]


def _messages(question: str, hits: Sequence[Hit], language: str, history: Sequence[Message] = ()) -> list[Message]:
    """[system, *history, user]: the instructions (with the text of any system message of
    `history` after them), the conversation so far, and the sources with the question."""
    sources_label, question_label = LABELS[language]
    listed = "\n\n".join(f"[{i}] ({source_label(h)})\n{h.text}" for i, h in enumerate(hits, start=1))
    own = [m["content"] for m in history if m.get("role") == "system" and isinstance(m.get("content"), str)]
    earlier = [m for m in history if not (m.get("role") == "system" and isinstance(m.get("content"), str))]
    return [
        {"role": "system", "content": "\n\n".join([INSTRUCTIONS[language], *own])},
        *earlier,
        {"role": "user", "content": f"{sources_label}:\n\n{listed}\n\n{question_label}: {question}"},
    ]


def build_prompt(
    llm: LLM,
    question: str,
    hits: Sequence[Hit],
    *,
    language: str | None = None,
    answer_tokens: int = 512,
    history: Sequence[Message] = (),
    context_length: int | None = None,
) -> AnswerPrompt:
    """The chat prompt with as many of `hits` (best first) as fit in the context window
    (`context_length`, default the model's) leaving `answer_tokens` for the answer.
    history: the conversation before the question (a chat request's earlier messages)."""
    language = language or detect_language(question)
    if language not in LANGUAGES:
        raise InvalidParameterError("language", f"must be one of {LANGUAGES}, got {language!r}")
    window = (context_length or llm.config.context_length) - answer_tokens
    kept: list[Hit] = []
    ids = llm.encode_chat(_messages(question, kept, language, history))
    if len(ids) > window:
        raise ContextOverflowError(
            f"the question alone takes {len(ids)} tokens of the {window} the context "
            f"window leaves beside a {answer_tokens}-token answer: shorten it"
        )
    for hit in hits:
        trial = llm.encode_chat(_messages(question, [*kept, hit], language, history))
        if len(trial) <= window:  # a source that does not fit is left out; a shorter one may still
            kept.append(hit)
            ids = trial
    return AnswerPrompt(_messages(question, kept, language, history), kept, language, ids)


def prepare(
    collection: Collection,
    question: str,
    llm: LLM,
    *,
    top: int = 5,
    mode: str = "hybrid",
    language: str | None = None,
    answer_tokens: int = 512,
    rerank: int = 0,
) -> AnswerPrompt:
    """Retrieves the `top` chunks for `question` (re-ranking the first `rerank` by `llm`, see
    Collection.search) and builds the prompt (`build_prompt`)."""
    hits = collection.search(question, top, mode=mode, rerank=rerank, reranker=llm)
    return build_prompt(llm, question, hits, language=language, answer_tokens=answer_tokens)


def default_params(max_tokens: int = 512) -> SamplingParams:
    """Greedy decoding: an answer from documents should be the model's most likely reading
    of them, not a creative one."""
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def stream_answer(llm: LLM, prompt: AnswerPrompt, params: SamplingParams | None = None) -> Iterator[StreamChunk]:
    """The answer to a prepared prompt, piece by piece."""
    return llm.chat_stream(prompt.messages, params or default_params())


def ask(
    collection: Collection,
    question: str,
    llm: LLM,
    *,
    top: int = 5,
    mode: str = "hybrid",
    language: str | None = None,
    params: SamplingParams | None = None,
    rerank: int = 0,
) -> Answer:
    """The whole answer with its numbered sources and the citations found in it."""
    params = params or default_params()
    prompt = prepare(
        collection,
        question,
        llm,
        top=top,
        mode=mode,
        language=language,
        answer_tokens=params.max_tokens or 512,
        rerank=rerank,
    )
    out = llm.chat(prompt.messages, params)
    valid, invalid = citations(out.text, len(prompt.sources))
    return Answer(out.text, prompt.sources, prompt.language, valid, invalid, prompt.prompt_token_ids, out.token_ids)
