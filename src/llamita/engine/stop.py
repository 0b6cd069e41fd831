"""Stop strings on streamed text: never emit a stop string, nor text that may begin one."""

from __future__ import annotations


class StopStringMatcher:
    """Feed decoded text deltas; get back the part that is safe to show.

    Text that could be the start of a stop string is held back until the next delta settles it,
    so a streaming client never sees a stop string, not even half of one.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add text; return what may be emitted now. Sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        if not self.stops:
            return delta
        text = self._held + delta
        first = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if first >= 0:
            self.stopped = True
            self._held = ""
            return text[:first]
        keep = 0
        for s in self.stops:
            # Longest suffix of `text` that is a proper prefix of `s`.
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """End of generation for another reason: release whatever was held back."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
