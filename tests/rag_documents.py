"""Helpers of the RAG tests: documents written by the tests themselves (PDFs by hand, one text
line per page in Helvetica; encrypted PDFs through pypdf; Word files through python-docx), and
a fast stand-in embedder (word hashing) for the tests of indexing and storage."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np

from llamita.rag.embedder import EmbeddingSpec


def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of (ASCII) text on each page."""
    n = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {n} >>"]
    font = 3 + 2 * n
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode('latin-1')}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1"))
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def write_pdf(path: Path, pages: list[str]) -> Path:
    path.write_bytes(pdf_bytes(pages))
    return path


def write_encrypted_pdf(path: Path, pages: list[str], password: str = "secret") -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(pages))))
    writer.encrypt(user_password=password, owner_password="owner-" + password, algorithm="RC4-128")
    with path.open("wb") as f:
        writer.write(f)
    return path


def write_corrupt_pdf(path: Path) -> Path:
    """A PDF header followed by a torn body: what a broken download leaves."""
    data = pdf_bytes(["This text is never read."])
    path.write_bytes(data[: len(data) // 3] + b"\x00garbage\xff" * 20)
    return path


def write_docx(path: Path, items: list[tuple[str, str]]) -> Path:
    """items: (style, text) with style "Heading 1", "Heading 2" ... or "" for a paragraph."""
    import docx

    document = docx.Document()
    for style, text in items:
        if style.startswith("Heading"):
            document.add_heading(text, level=int(style.split()[1]))
        else:
            document.add_paragraph(text)
    document.save(str(path))
    return path


class HashEmbedder:
    """Bag-of-words vectors (each word hashed to a dimension), unit length; tokens = words."""

    name = "hash-embedder"
    model_path = "hash-embedder"
    dim = 64
    spec = EmbeddingSpec()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        return v / max(float(np.linalg.norm(v)), 1e-9)

    def embed_documents(self, texts):
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_query(self, text):
        return self._vector(text)
