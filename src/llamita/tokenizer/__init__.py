"""Tokenization: byte-level BPE, streaming detokenization, chat templates, tool calls.

    tok = Tokenizer.from_gguf_metadata(meta)        # or tokenizer_from_folder(Path("model/"))
    ids = tok.encode_chat([{"role": "user", "content": "Hola"}])
    det = IncrementalDetokenizer(tok)
    text = "".join(det.add(i) for i in generated) + det.flush()

Never imports torch.
"""

from __future__ import annotations

from llamita.tokenizer.chat_template import CHATML_TEMPLATE, ChatTemplate
from llamita.tokenizer.detokenizer import IncrementalDetokenizer
from llamita.tokenizer.files import tokenizer_from_folder
from llamita.tokenizer.tokenizer import Tokenizer
from llamita.tokenizer.tool_calls import parse_tool_calls

__all__ = [
    "CHATML_TEMPLATE",
    "ChatTemplate",
    "IncrementalDetokenizer",
    "Tokenizer",
    "parse_tool_calls",
    "tokenizer_from_folder",
]
