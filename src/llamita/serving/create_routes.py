"""Ollama's POST /api/create: make a library model (as `llamita create`) from a JSON body.

Ollama's body: `model` (the new name), `from` (a library name or a path on this machine),
`system`, `template` (Jinja here), `parameters`, `messages`, `license`, `adapters` (here: paths
on this machine, as an object's keys as Ollama sends them, or a list), `stream`; and the older
form, `name` + `modelfile` (a Modelfile's text, the JSON fields layered over it). The answer is
Ollama's: NDJSON status lines ending {"status": "success"}, or that one object with
"stream": false. A FROM name that is not on this machine yet (a repository or a short name) is
pulled first, as Ollama does, with /api/pull's progress lines before the create's. Everything
else is checked before the first line, so a bad body is an HTTP error; only a failed download
ends the stream with {"error": ...}. The model is stored by reference (no weights are copied);
the running server keeps serving the model it started with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from llamita.errors import ModelFileError, ModelfileError
from llamita.library.create import check_creatable, create_model, from_path
from llamita.library.modelfile import Command, Modelfile, parse_modelfile, settings_from_request
from llamita.library.pull import needs_pull
from llamita.library.settings import ModelSettings
from llamita.serving.errors import APIError, not_supported
from llamita.serving.library_routes import run_pull, stream_progress
from llamita.serving.request_body import field, read_json_object

router = APIRouter()


@router.post("/api/create")
async def create(request: Request) -> Any:
    body = await read_json_object(request)
    name = field(body, "model", str) or field(body, "name", str)
    if not name:
        raise APIError(400, "'model' is required: the name of the model to create", param="model")
    stream = field(body, "stream", bool, True)
    for unsupported in ("files", "quantize"):
        if body.get(unsupported):
            what = (
                "uploaded model files; give 'from' a library name or a path on this machine"
                if unsupported == "files"
                else "quantizing while creating; `llamita quantize` does it"
            )
            raise not_supported(unsupported, what)
    modelfile = _modelfile(body)
    folder = Path.cwd()
    with _as_http_errors():
        await run_in_threadpool(check_creatable, name, modelfile, folder)
        pulling = from_path(modelfile, folder) is None and await run_in_threadpool(needs_pull, modelfile.from_)

    def work(emit: Callable[[dict[str, Any]], None]) -> None:
        if pulling:  # as Ollama's create: a FROM not here yet is pulled first
            run_pull(modelfile.from_, emit, final=False)
        manifest = create_model(name, modelfile, folder)
        for status in (f"using {modelfile.from_} ({manifest.path}): no weights copied", "writing manifest", "success"):
            emit({"status": status})

    if not stream:
        with _as_http_errors():
            await run_in_threadpool(work, lambda _: None)
        return JSONResponse({"status": "success"})
    if not pulling:  # nothing left that can fail but the disk: still an HTTP error, not a line
        statuses: list[dict[str, Any]] = []
        with _as_http_errors():
            await run_in_threadpool(work, statuses.append)
        return StreamingResponse((json.dumps(s) + "\n" for s in statuses), media_type="application/x-ndjson")
    return stream_progress(work)


@contextmanager
def _as_http_errors() -> Iterator[None]:
    """A bad Modelfile is a 400 (naming its line's field); a FROM that is not here is a 404."""
    try:
        yield
    except ModelfileError as e:
        raise APIError(400, str(e), param="modelfile" if e.line else None) from None
    except ModelFileError as e:
        raise APIError(404, str(e), param="from") from None


def _modelfile(body: dict[str, Any]) -> Modelfile:
    """What the body asks for, as a checked Modelfile: the `modelfile` text's settings (if any)
    under the JSON fields, FROM from `from` or the text."""
    text = field(body, "modelfile", str)
    try:
        base = parse_modelfile(text) if text is not None else None
        own = settings_from_request(body)
    except ModelfileError as e:
        raise APIError(400, str(e), param="modelfile" if e.line else "parameters") from None
    from_ = field(body, "from", str) or (base.from_ if base is not None else None)
    if not from_:
        raise APIError(400, "'from' is required: the model to start from (a library name or a path)", param="from")
    adapters = body.get("adapters") or {}
    if isinstance(adapters, dict):
        adapters = list(adapters)  # Ollama: {file name: digest}; here the names are paths
    if not isinstance(adapters, list) or not all(isinstance(a, str) and a for a in adapters):
        raise APIError(400, "'adapters' must name LoRA adapters by their paths on this machine", param="adapters")
    own = ModelSettings(own.parameters, own.system, own.template, own.messages, tuple(adapters), own.license)
    settings = own.layered_over(base.settings if base is not None else None)
    commands = (base.commands if base is not None else ()) + tuple(Command("ADAPTER", a) for a in adapters)
    return Modelfile(from_, settings, commands)
