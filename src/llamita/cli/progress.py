"""A download progress bar drawn by rich, in the shape huggingface_hub's `http_get` expects of
a `tqdm_class` (constructed with total/initial/desc, used as a context manager, `update(n)`)."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from llamita.cli.common import stderr


class RichDownloadBar:
    """One file's bar: name, bar, bytes done / total, rate and time left. Bytes a resumed
    download already had count as done but not towards the rate."""

    def __init__(self, *, total: int | None = None, initial: int = 0, desc: str = "", **_: Any) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
        )
        self._task = self._progress.add_task(desc, total=total, completed=initial)
        self._progress.start()

    def update(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()

    def __enter__(self) -> RichDownloadBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
