"""Documents -> blocks of text in reading order: headings and paragraphs, each with the heading
path it sits under and, for PDFs, its page. .txt/.md (Markdown `#` headings), .html (Beautiful
Soup), .pdf (pypdf), .docx (python-docx). The parsers are imported only when a file needs them."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llamita.errors import DocumentError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Block:
    """A heading or a paragraph. heading: the path of headings above it ("A > B"; a heading's
    own path ends with itself). page: 1-based PDF page, else None."""

    text: str
    heading: str = ""
    page: int | None = None
    is_heading: bool = False


class _Headings:
    """The stack of open headings, by level (1 = top)."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, str]] = []

    def open(self, level: int, title: str) -> str:
        self.stack = [(lv, t) for lv, t in self.stack if lv < level] + [(level, title)]
        return self.path

    @property
    def path(self) -> str:
        return " > ".join(t for _, t in self.stack)


def _clean_heading(text: str) -> str:
    return re.sub(r"[*_`]+", "", text).strip()


def markdown_blocks(text: str) -> list[Block]:
    """Markdown (and plain text, where `#` headings are rare and harmless): ATX headings,
    paragraphs separated by blank lines, fenced code kept whole."""
    blocks: list[Block] = []
    headings = _Headings()
    para: list[str] = []
    in_fence = False

    def flush() -> None:
        body = "\n".join(para).strip()
        if body:
            blocks.append(Block(body, headings.path))
        para.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            para.append(line)
            continue
        match = None if in_fence else _ATX.match(line)
        if match:
            flush()
            title = _clean_heading(match.group(2))
            if title:
                blocks.append(Block(line.strip(), headings.open(len(match.group(1)), title), is_heading=True))
        elif not line.strip() and not in_fence:
            flush()
        else:
            para.append(line)
    flush()
    return blocks


_HTML_BLOCKS = ("p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption", "caption", "div")
_HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


def html_blocks(data: bytes) -> list[Block]:
    """Visible text of an HTML page: h1-h6 as headings, innermost block elements as paragraphs
    (a <li> holding <p>s gives the <p>s), scripts, styles and navigation dropped."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "nav", "head"]):
        tag.decompose()
    wanted = set(_HTML_BLOCKS) | set(_HTML_HEADINGS)
    blocks: list[Block] = []
    headings = _Headings()
    for element in soup.find_all(list(wanted)):
        if element.name in _HTML_HEADINGS:
            title = " ".join(element.get_text(" ").split())
            if title:
                blocks.append(Block(title, headings.open(int(element.name[1]), title), is_heading=True))
        elif not element.find(list(wanted)):  # innermost only: no text twice
            body = " ".join(element.get_text(" ").split())
            if body:
                blocks.append(Block(body, headings.path))
    return blocks


def pdf_blocks(path: Path) -> list[Block]:
    """Each page's text (pypdf), split into paragraphs at blank lines, with its page number."""
    from pypdf import PasswordType, PdfReader

    # pypdf logs what it repairs ("EOF marker not found") as warnings; a file it cannot read
    # raises, and the indexer reports that once, by name.
    quiet = logging.getLogger("pypdf")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        reader = PdfReader(path)
        # An owner-password-only PDF opens with the empty user password; anything else needs one.
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise DocumentError(str(path), "the PDF is password-protected; save an unprotected copy and add that")
        blocks = []
        for number, page in enumerate(reader.pages, start=1):
            for para in re.split(r"\n\s*\n", page.extract_text() or ""):
                if para.strip():
                    blocks.append(Block(para.strip(), page=number))
        return blocks
    finally:
        quiet.setLevel(level)


def docx_blocks(path: Path) -> list[Block]:
    """Paragraphs and tables in document order (python-docx); paragraphs styled "Title" or
    "Heading N" are headings."""
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(str(path))
    blocks: list[Block] = []
    headings = _Headings()
    for element in document.element.body.iterchildren():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = Paragraph(element, document)
            text = para.text.strip()
            style = (para.style.name if para.style is not None else "") or ""
            level = 1 if style == "Title" else int(style[8:]) if re.fullmatch(r"Heading [1-9]", style) else 0
            if text and level:
                blocks.append(Block(text, headings.open(level, text), is_heading=True))
            elif text:
                blocks.append(Block(text, headings.path))
        elif tag == "tbl":
            for row in Table(element, document).rows:
                cells = " | ".join(c.text.strip() for c in row.cells if c.text.strip())
                if cells:
                    blocks.append(Block(cells, headings.path))
    return blocks


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM), else Windows-1252/Latin-1, which decode any bytes."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            return data.decode("latin-1")


def read_blocks(path: Path, data: bytes) -> list[Block]:
    """The blocks of one document (its bytes already read, to hash them once).

    Raises DocumentError naming the file when it cannot be parsed: parsers of PDF and Office
    files meet damaged input with many exception types, so every failure is turned into that
    one error here and the indexer skips the file."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DocumentError(str(path), f"unsupported file type '{suffix}' (supported: {', '.join(SUFFIXES)})")
    try:
        if suffix == ".pdf":
            return pdf_blocks(path)
        if suffix == ".docx":
            return docx_blocks(path)
        if suffix in (".html", ".htm"):
            return html_blocks(data)
        return markdown_blocks(decode_text(data))
    except (DocumentError, ImportError):  # a missing parser is an install problem, not the file's
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring: third-party parsers on damaged files
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise DocumentError(str(path), f"damaged, or not really a {suffix} file ({detail})") from e


def find_documents(paths: Iterable[Path]) -> Iterator[Path]:
    """Every supported file under `paths` (files as given, folders walked, hidden entries
    skipped), absolute and sorted, each once."""
    seen: set[Path] = set()
    for root in paths:
        root = root.expanduser().resolve()
        if root.is_file():
            found = [root]
        elif root.is_dir():
            found = sorted(
                p
                for p in root.rglob("*")
                if p.is_file()
                and p.suffix.lower() in SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
        else:
            raise DocumentError(str(root), "no such file or folder")
        for p in found:
            if p not in seen:
                seen.add(p)
                yield p
