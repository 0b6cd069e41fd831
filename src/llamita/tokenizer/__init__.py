"""Tokenization for GGUF models: byte-level BPE, streaming detokenization, chat templates.

    tok = Tokenizer.from_gguf_metadata(meta)
    ids = tok.encode_chat([{"role": "user", "content": "Hola"}])
    det = IncrementalDetokenizer(tok)
    text = "".join(det.add(i) for i in generated) + det.flush()

Never imports torch.
"""

from __future__ import annotations

from llamita.tokenizer.chat_template import CHATML_TEMPLATE, ChatTemplate
from llamita.tokenizer.detokenizer import IncrementalDetokenizer
from llamita.tokenizer.tokenizer import Tokenizer

__all__ = ["CHATML_TEMPLATE", "ChatTemplate", "IncrementalDetokenizer", "Tokenizer"]
