"""Optional re-ranking of retrieved chunks by a language model itself, by question likelihood
(UPR: Sachan et al., "Improving Passage Retrieval with Zero-Shot Question Generation", 2022):
a candidate's score is the mean log-probability the model gives the question's tokens after
reading the passage. It needs no embedding training, only a model that reads the language, at
the price of one forward pass per candidate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from llamita.api.llm import LLM
from llamita.engine.chunked_forward import hidden_chunks
from llamita.rag.answer import detect_language
from llamita.rag.retrieval import Hit, reciprocal_rank_fusion

PROMPTS = {
    "es": "Pasaje: {text}\n\nUna pregunta que este pasaje responde:",
    "en": "Passage: {text}\n\nA question this passage answers:",
}


def question_likelihood(llm: LLM, passage: str, question: str, language: str) -> float:
    """Mean log P(question tokens | passage prompt), natural log, per token."""
    prefix = llm.encode_prompt(PROMPTS[language].format(text=passage))
    asked = llm.tokenizer.encode(" " + question.strip())
    ids = (prefix + asked)[-llm.config.context_length :]
    first = len(ids) - len(asked)  # position of the question's first token
    model = llm.loaded.model
    total = 0.0
    with torch.inference_mode():
        for start, hidden in hidden_chunks(model, ids):
            # Row p predicts token p + 1: rows first-1 .. len-2 predict the question.
            lo, hi = max(first - 1, start), min(len(ids) - 1, start + hidden.shape[0])
            if lo >= hi:
                continue
            logprobs = torch.log_softmax(model.logits(hidden[lo - start : hi - start]).float(), dim=-1)
            targets = torch.tensor(ids[lo + 1 : hi + 1], device=logprobs.device)
            total += float(logprobs.gather(1, targets[:, None]).sum())
    return total / len(asked)


def rerank(llm: LLM, question: str, hits: Sequence[Hit], language: str | None = None) -> list[Hit]:
    """`hits` in a new order: their retrieval order and the question-likelihood order fused by
    reciprocal rank fusion (the model alone is a weaker ranker than with retrieval beside it);
    each hit's score becomes the fused one."""
    language = language or detect_language(question)
    scores = [question_likelihood(llm, h.text, question, language) for h in hits]
    by_model = sorted(range(len(hits)), key=lambda i: -scores[i])
    fused = reciprocal_rank_fusion([list(range(len(hits))), by_model])
    return [replace(hits[i], score=s) for i, s in fused]
