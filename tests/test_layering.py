"""Imports flow one way: cli -> serving -> rag -> glass -> api -> engine -> {model, library -> weights -> tokenizer}
-> kernels; the offline jobs sit beside the API, above the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "llamita"
# For each package, the llamita packages it may import.
ALLOWED = {
    "cli": {
        "cli",
        "serving",
        "rag",
        "glass",
        "api",
        "jobs",
        "engine",
        "library",
        "config",
        "errors",
        "sampling_params",
    },
    # Serving calls glass for the web panel's /glass/... routes; glass never imports serving.
    # /api/show describes the model as `llamita info` does (jobs.model_info); /api/create makes
    # a library model as `llamita create` does (library.create). The library routes (/api/tags,
    # /api/pull, /api/delete...) and the model pool use the library as the CLI's list, pull, rm
    # and cp do.
    "serving": {
        "serving",
        "rag",
        "glass",
        "api",
        "jobs",
        "engine",
        "library",
        "config",
        "database",
        "errors",
        "sampling_params",
        "tokenizer",
    },
    # RAG (document collections) sits above the engine and glass (its --explain reads attention
    # maps), below the CLI and the server.
    "rag": {"rag", "glass", "api", "engine", "model", "tokenizer", "config", "database", "errors", "sampling_params"},
    # Glass sits beside serving: above the engine, below the CLI and the server.
    "glass": {"glass", "api", "engine", "model", "tokenizer", "config", "errors", "sampling_params"},
    # The public Python API drives the runtime; the runtime never imports it.
    "api": {"api", "engine", "model", "tokenizer", "config", "errors", "sampling_params"},
    # Offline jobs (one per command beside the request path) use the runtime and the formats.
    "jobs": {
        "jobs",
        "engine",
        "model",
        "tokenizer",
        "library",
        "weights",
        "kernels",
        "config",
        "errors",
        "sampling_params",
    },
    "engine": {"engine", "model", "tokenizer", "library", "weights", "kernels", "config", "errors", "sampling_params"},
    # Names and the local library: reads weight headers (to check and describe a download),
    # checks a Modelfile's PARAMETERs by SamplingParams' rules,
    # never builds a model; the engine's loader asks it what a name means.
    "library": {"library", "weights", "config", "errors", "sampling_params"},
    "model": {"model", "kernels", "config", "errors"},
    "tokenizer": {"tokenizer", "errors"},
    # The GGUF tokenizer keys of a folder come from the tokenizer's own file reader (one reader).
    "weights": {"weights", "tokenizer", "kernels", "config", "errors"},
    "kernels": {"kernels", "errors"},
    "config": set(),
    # SQLite conventions shared by the chat store and document collections.
    "database": set(),
    "errors": set(),
    "sampling_params": {"errors"},
    "__main__": {"cli"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llamita."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("llamita."))
    return found


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_flow_one_way(path):
    rel = path.relative_to(SRC)
    package = rel.parts[0].removesuffix(".py")
    if package == "__init__":
        return
    bad = imported_packages(path) - ALLOWED[package]
    assert not bad, f"{rel} imports {sorted(bad)}"


def test_tokenizer_and_sampling_params_never_import_torch():
    for path in list((SRC / "tokenizer").rglob("*.py")) + [SRC / "sampling_params.py", SRC / "config.py"]:
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(n == "torch" or n.startswith("torch.") for n in names), path
