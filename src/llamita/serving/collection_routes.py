"""Document collections over HTTP (serving/collections.py does the work, in a worker thread):

    GET    /v1/collections                       every collection with its counts
    POST   /v1/collections                       {"name", "embedding_model"?} -> 201
    GET    /v1/collections/{name}                files, chunks, sizes, embedding model
    DELETE /v1/collections/{name}
    POST   /v1/collections/{name}/files          multipart/form-data, field "files" (one or more)
    DELETE /v1/collections/{name}/files/{file}
    POST   /v1/collections/{name}/search         {"query", "top"?, "mode"?} -> hits

An upload is limited by the server's request body limit (8 MiB, `create_app(max_body_bytes=)`;
a larger one gets 413) and to 64 files."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from llamita.engine.threads import to_fresh_thread
from llamita.rag.collection import MODES
from llamita.serving.collections import MAX_FILES_PER_UPLOAD
from llamita.serving.errors import APIError
from llamita.serving.protocol import MAX_TOP
from llamita.serving.rag_chat import collections_of
from llamita.serving.request_body import field, read_json_object

router = APIRouter()


@router.get("/v1/collections")
async def list_collections(request: Request) -> JSONResponse:
    collections = collections_of(request)

    def work() -> list[dict[str, Any]]:
        return [_summary(collections.describe(name)) for name in collections.names()]

    return JSONResponse({"object": "list", "data": await asyncio.to_thread(work)})


def _summary(described: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in described.items() if k != "files"}


@router.post("/v1/collections")
async def create_collection(request: Request) -> JSONResponse:
    body = await read_json_object(request)
    name = field(body, "name", str, required=True)
    model = field(body, "embedding_model", str)
    collections = collections_of(request)
    return JSONResponse(await to_fresh_thread(collections.create, name, model), status_code=201)


@router.get("/v1/collections/{name}")
async def get_collection(request: Request, name: str) -> JSONResponse:
    return JSONResponse(await asyncio.to_thread(collections_of(request).describe, name))


@router.delete("/v1/collections/{name}", status_code=204)
async def delete_collection(request: Request, name: str) -> Response:
    await asyncio.to_thread(collections_of(request).delete, name)
    return Response(status_code=204)


@router.post("/v1/collections/{name}/files")
async def upload_files(request: Request, name: str) -> JSONResponse:
    """Indexes the uploaded files; a file that cannot be read is listed in `skipped` with the
    reason, the others are indexed."""
    collections = collections_of(request)
    collections.path(name)  # 400 for a bad name before reading the body
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(
            400, "upload files as multipart/form-data in the field 'files' (curl -F files=@notes.md)", param="files"
        )
    async with request.form(max_files=MAX_FILES_PER_UPLOAD, max_fields=MAX_FILES_PER_UPLOAD) as form:
        uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not uploads:
            raise APIError(400, "no files: send them in the multipart field 'files'", param="files")
        files = [(f.filename or "", await f.read()) for f in uploads]
    return JSONResponse(await to_fresh_thread(collections.add_files, name, files))


@router.delete("/v1/collections/{name}/files/{file:path}", status_code=204)
async def delete_file(request: Request, name: str, file: str) -> Response:
    await asyncio.to_thread(collections_of(request).delete_file, name, file)
    return Response(status_code=204)


@router.post("/v1/collections/{name}/search")
async def search(request: Request, name: str) -> JSONResponse:
    """{"query", "top" (1..20, default 5), "mode" (hybrid, bm25, dense)} -> the best chunks
    with their text, source, location and scores."""
    body = await read_json_object(request)
    query = field(body, "query", str, required=True)
    if not query.strip():
        raise APIError(400, "'query' is empty", param="query")
    top = field(body, "top", int, 5)
    if not 1 <= top <= MAX_TOP:
        raise APIError(400, f"'top' must be in 1..{MAX_TOP}, got {top}", param="top")
    mode = field(body, "mode", str, "hybrid")
    if mode not in MODES:
        raise APIError(400, f"'mode' must be one of {', '.join(MODES)}, got {mode!r}", param="mode")
    collections = collections_of(request)

    def work() -> list[dict[str, Any]]:
        return [collections.hit_json(n, hit) for n, hit in collections.search([name], query, top, mode)]

    return JSONResponse({"object": "list", "collection": name, "query": query, "data": await to_fresh_thread(work)})
