"""Documents -> blocks: headings, paragraphs and pages from each supported format; damaged and
password-protected files raise DocumentError naming the file."""

from __future__ import annotations

import pytest

from llamita.errors import DocumentError
from llamita.rag.readers import find_documents, markdown_blocks, read_blocks

from rag_documents import write_corrupt_pdf, write_docx, write_encrypted_pdf, write_pdf


def read(path):
    return read_blocks(path, path.read_bytes())


def test_markdown_headings_paragraphs_and_code():
    blocks = markdown_blocks(
        "# Uno\n\nTexto a.\nsigue.\n\n## Dos **B**\n\n```\n# no es título\n\ncódigo\n```\n\n# Tres\nfin"
    )
    assert [(b.text, b.heading, b.is_heading) for b in blocks] == [
        ("# Uno", "Uno", True),
        ("Texto a.\nsigue.", "Uno", False),
        ("## Dos **B**", "Uno > Dos B", True),
        ("```\n# no es título\n\ncódigo\n```", "Uno > Dos B", False),
        ("# Tres", "Tres", True),
        ("fin", "Tres", False),
    ]


def test_html_keeps_visible_text_under_headings(tmp_path):
    page = tmp_path / "p.html"
    page.write_text(
        "<html><head><title>t</title><style>p{}</style></head><body><nav>menú</nav>"
        "<h1>Llama</h1><p>La atención <b>está</b> aquí.</p><ul><li><p>uno</p></li><li>dos</li></ul>"
        "<script>alert(1)</script><h2>RoPE</h2><div>rotaciones</div></body></html>",
        encoding="utf-8",
    )
    assert [(b.text, b.heading) for b in read(page)] == [
        ("Llama", "Llama"),
        ("La atención está aquí.", "Llama"),
        ("uno", "Llama"),
        ("dos", "Llama"),
        ("RoPE", "Llama > RoPE"),
        ("rotaciones", "Llama > RoPE"),
    ]


def test_pdf_pages_are_numbered(tmp_path):
    blocks = read(write_pdf(tmp_path / "a.pdf", ["First page text.", "Second page text."]))
    assert [(b.text, b.page) for b in blocks] == [("First page text.", 1), ("Second page text.", 2)]


def test_docx_headings_and_paragraphs(tmp_path):
    path = write_docx(
        tmp_path / "a.docx",
        [("Heading 1", "Modelo"), ("", "Tiene 30 capas."), ("Heading 2", "Atención"), ("", "GQA con 3 cabezas KV.")],
    )
    assert [(b.text, b.heading, b.is_heading) for b in read(path)] == [
        ("Modelo", "Modelo", True),
        ("Tiene 30 capas.", "Modelo", False),
        ("Atención", "Modelo > Atención", True),
        ("GQA con 3 cabezas KV.", "Modelo > Atención", False),
    ]


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("torn.pdf", write_corrupt_pdf, "damaged"),
        ("locked.pdf", lambda p: write_encrypted_pdf(p, ["secret text"]), "password-protected"),
        ("broken.docx", lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "damaged"),
    ],
)
def test_unreadable_documents_raise_naming_the_file(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(DocumentError) as e:
        read(path)
    assert str(path) in str(e.value) and reason in str(e.value)


def test_find_documents_walks_folders_skipping_hidden_and_unsupported(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    for name in ("a.md", "sub/b.txt", "sub/c.png", ".git/d.txt", ".hidden.md"):
        (tmp_path / name).write_text("x")
    found = list(find_documents([tmp_path, tmp_path / "a.md"]))
    assert found == [tmp_path / "a.md", tmp_path / "sub" / "b.txt"]
