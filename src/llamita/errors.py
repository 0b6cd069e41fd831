"""Typed errors raised by every layer of llamita.

Each carries a one-line message a user can act on; the CLI prints it and exits non-zero
instead of showing a traceback.
"""

from __future__ import annotations


class LlamitaError(Exception):
    """Base class of every error llamita raises on purpose."""


class ModelFileError(LlamitaError):
    """A model file is missing, unreadable, not in the expected format, truncated or corrupt."""


class UnsupportedModelError(LlamitaError):
    """A well-formed model file that uses an architecture or tensor type we cannot run."""


class InvalidParameterError(LlamitaError, ValueError):
    """A generation or configuration parameter is out of range; the message names it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"invalid parameter '{name}': {message}")
        self.name = name


class ModelfileError(LlamitaError, ValueError):
    """A Modelfile (or an /api/create body) that cannot make a model: an unknown instruction or
    parameter, a value of the wrong type, a missing FROM. `line` is its line (None for JSON)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"Modelfile line {line}: {message}" if line else f"Modelfile: {message}")
        self.line = line
        self.reason = message


class ContextOverflowError(LlamitaError):
    """A prompt (plus the tokens requested) does not fit in the model's context window."""


class TemplateError(LlamitaError):
    """A chat template failed to render, or tried something the sandbox forbids."""


class TokenizerError(LlamitaError):
    """The tokenizer described by a model file cannot be built."""


class DownloadError(LlamitaError):
    """A model could not be pulled: no access, not found, no disk space, a network failure or
    a file whose checksum does not match; the message says what to do."""


class DocumentError(LlamitaError):
    """A document cannot be read (corrupt, password-protected, unsupported); the message names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = path
        self.reason = reason


class CollectionError(LlamitaError):
    """A document collection is missing, has a bad name, or was built for another embedding model."""
