"""The `llamita` command: run | chat | serve | pull | list | show | rm | cp | create | index | search | ask | info ..."""

from __future__ import annotations

import typer

from llamita.cli import (
    ask,
    bench,
    chat,
    finetune,
    glass,
    index,
    info,
    library,
    lora,
    memory,
    perplexity,
    quantize,
    run,
    serve,
)

app = typer.Typer(
    name="llamita",
    help="Run, chat with and inspect Llama-architecture GGUF models on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run.run)
app.command("chat")(chat.chat)
app.command("serve")(serve.serve)
app.command("pull")(library.pull)
app.command("list")(library.list_models)
app.command("show")(library.show)
app.command("rm")(library.rm)
app.command("cp")(library.cp)
app.command("create")(library.create)
app.command("info")(info.info)
app.command("quantize")(quantize.quantize)
app.command("perplexity")(perplexity.perplexity)
app.command("bench")(bench.bench)
app.command("memory")(memory.memory)
app.command("tokenize")(glass.tokenize)
app.command("next")(glass.next_token)
app.command("lens")(glass.lens)
app.command("attention")(glass.attention)
app.command("embed")(glass.embed)
app.command("analogy")(glass.analogy)
app.command("sample")(glass.sample)
app.add_typer(lora.app, name="lora")
app.command("finetune")(finetune.finetune)
app.add_typer(index.app, name="index")
app.command("search")(ask.search)
app.command("ask")(ask.ask)


if __name__ == "__main__":
    app()
