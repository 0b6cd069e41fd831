"""Pooling choices of engine/embeddings.py: last-token pooling is the final hidden state of
the last token, unit length; mean pooling averages every position, as before."""

from __future__ import annotations

import pytest
import torch

from llamita.engine.embeddings import embed
from llamita.errors import InvalidParameterError


def test_last_and_mean_pooling_read_the_final_hidden_states(llm_f32):
    model, n = llm_f32.loaded.model, llm_f32.tokenizer.vocab_size
    ids = llm_f32.encode_prompt("La atención está en todas partes.")
    with torch.inference_mode():
        hidden = model.hidden_states(torch.tensor([ids]))[0].float()  # (S, dim)
    last = embed(model, ids, n, pooling="last")
    mean = embed(model, ids, n)
    torch.testing.assert_close(last, torch.nn.functional.normalize(hidden[-1], dim=0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mean, torch.nn.functional.normalize(hidden.mean(0), dim=0), atol=1e-5, rtol=1e-4)
    with pytest.raises(InvalidParameterError, match="pooling"):
        embed(model, ids, n, pooling="cls")
