"""Ollama's `keep_alive` and llamita's memory sizes, read from what users write: "5m", "1h30m",
300 (seconds), 0 (unload now), -1 (keep); "16GiB", "8GB", 4000000000."""

from __future__ import annotations

import os
import re

from llamita.errors import InvalidParameterError

DEFAULT_KEEP_ALIVE = 300.0  # seconds: Ollama's 5 minutes
# Go's time.ParseDuration units, which Ollama's keep_alive strings use.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_keep_alive(value: object, name: str = "keep_alive") -> float | None:
    """Seconds a model stays loaded after its last request: 0 unloads at once, None keeps it
    loaded for ever (any negative value). Numbers are seconds; strings are Go durations
    ("5m", "1h30m", "-1m") or numbers."""
    if isinstance(value, bool) or value is None:
        raise InvalidParameterError(name, f'must be a duration such as "5m" or a number of seconds, got {value!r}')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            parts = _PART.findall(body)
            if not body or "".join(a + u for a, u in parts) != body:
                raise InvalidParameterError(
                    name,
                    f'\'{value}\' is not a duration: write it as "5m", "1h30m", "90s", a number of seconds, 0 or -1',
                ) from None
            seconds = sign * sum(float(a) * _UNITS[u] for a, u in parts)
    else:
        raise InvalidParameterError(name, f'must be a duration such as "5m" or a number of seconds, got {value!r}')
    if seconds != seconds:  # NaN
        raise InvalidParameterError(name, "must be a number of seconds, not NaN")
    return None if seconds < 0 else seconds


def default_keep_alive() -> float | None:
    """$OLLAMA_KEEP_ALIVE when set (as Ollama reads it), else 5 minutes."""
    value = os.environ.get("OLLAMA_KEEP_ALIVE", "").strip()
    return parse_keep_alive(value, "OLLAMA_KEEP_ALIVE") if value else DEFAULT_KEEP_ALIVE


def parse_bytes(value: str | int, name: str = "max_memory") -> int:
    """A size in bytes from "16GiB", "8GB", "512MiB" or a plain number of bytes."""
    if isinstance(value, int):
        n = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise InvalidParameterError(
                name, f"'{value}' is not a size: write it as 16GiB, 8GB, 512MiB or a number of bytes"
            )
        n = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if n <= 0:
        raise InvalidParameterError(name, f"must be more than 0 bytes, got {value!r}")
    return n


def format_bytes(n: int) -> str:
    """Sizes in messages: GiB above one, else MiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
