"""Real texts for perplexity runs, one English and one Spanish, from package registries.

Nothing is downloaded here: installing is the user's step, and a missing text is reported
with the exact command. Each text is pinned by SHA-256, so numbers from different machines
are comparable; a text that differs (another package version) is refused.

  en  "Botchan (Master Darling)" by Natsume Sōseki, Project Gutenberg EBook #8868, as shipped
      in the source distribution of sentencepiece 0.2.3 on PyPI (sentencepiece-0.2.3/test/
      botchan.txt): 278,779 bytes, 278,777 characters (UTF-8 with BOM, CRLF line ends).
  es  "Referencia de Debian" 2.100 (Osamu Aoki et al., Spanish translation), plain-text edition
      in the Debian package debian-reference-es 2.100 (bookworm):
      /usr/share/debian-reference/debian-reference.es.txt.gz, unpacked: 1,023,562 bytes,
      1,003,969 characters. Mostly Spanish prose with command lines and text tables; a few
      untranslated English passages remain (no Spanish book is packaged on PyPI or Debian).

The texts are unpacked once into ~/.cache/llamita/corpus (or $LLAMITA_CORPUS_DIR).

    python benchmarks/corpus.py            # JSON: {"en": "/path", "es": "/path"}
    llamita perplexity "$(python benchmarks/corpus.py en)" --ctx 512 --chunks 20
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamita" / "corpus"
    return Path(os.environ.get("LLAMITA_CORPUS_DIR", default))


@dataclass(frozen=True)
class CorpusText:
    language: str
    title: str
    package: str  # registry package and version it comes from
    source: str  # the file inside the installed package / archive
    sha256: str  # of the text as returned (after unpacking)
    n_chars: int

    def install_command(self) -> str:
        if self.language == "en":
            return f"pip download --no-deps --no-binary :all: sentencepiece==0.2.3 -d {cache_dir()}"
        return "apt-get install debian-reference-es   # (sudo) Debian 12 ships 2.100"


TEXTS = {
    "en": CorpusText(
        "en",
        "Botchan (Master Darling), Natsume Sōseki, Project Gutenberg #8868",
        "sentencepiece==0.2.3 (PyPI sdist sentencepiece-0.2.3.tar.gz)",
        "sentencepiece-0.2.3/test/botchan.txt",
        "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7",
        278_777,
    ),
    "es": CorpusText(
        "es",
        "Referencia de Debian 2.100 (texto plano, español)",
        "debian-reference-es 2.100 (Debian 12 bookworm)",
        "/usr/share/debian-reference/debian-reference.es.txt.gz",
        "c2cf3608cca6780fb3047090e0a2df0530e90d385864021aef52e02155dee48e",
        1_003_969,
    ),
}


class CorpusMissing(RuntimeError):
    """The package that carries a text is not installed (or is another version)."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unpack(text: CorpusText) -> bytes:
    if text.language == "en":
        archive = cache_dir() / "sentencepiece-0.2.3.tar.gz"
        if not archive.is_file():
            raise CorpusMissing(f"{archive} not found")
        with tarfile.open(archive) as tar:
            member = tar.extractfile(text.source)
            if member is None:
                raise CorpusMissing(f"{text.source} is not a file in {archive}")
            return member.read()
    source = Path(text.source)
    if not source.is_file():
        raise CorpusMissing(f"{source} not found")
    return gzip.decompress(source.read_bytes())


def corpus_path(language: str) -> Path:
    """Path of the unpacked text for `language` ("en" or "es"). Raises CorpusMissing, whose
    message names the command that installs the package."""
    if language not in TEXTS:
        raise ValueError(f"no corpus text for {language!r}; have {', '.join(TEXTS)}")
    text = TEXTS[language]
    path = cache_dir() / f"{language}-{text.sha256[:12]}.txt"
    if path.is_file() and _sha256(path) == text.sha256:
        return path
    try:
        data = _unpack(text)
    except CorpusMissing as e:
        raise CorpusMissing(
            f"{language} text ({text.package}) is missing: {e}. Install it with:\n    {text.install_command()}"
        ) from None
    if hashlib.sha256(data).hexdigest() != text.sha256:
        raise CorpusMissing(
            f"{text.source} is not the pinned version ({text.package}); "
            "its perplexity would not compare with published numbers"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def main(argv: list[str]) -> int:
    languages = argv or list(TEXTS)
    try:
        paths = {lang: str(corpus_path(lang)) for lang in languages}
    except (CorpusMissing, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(paths[languages[0]] if len(argv) == 1 else json.dumps(paths, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
