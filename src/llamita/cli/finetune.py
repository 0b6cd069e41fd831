"""`llamita finetune`: train a LoRA adapter on JSONL chats, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llamita.cli.common import DtypeOption, ModelOption, friendly_errors, stderr

if TYPE_CHECKING:
    from llamita.jobs.finetune import StepReport


@friendly_errors
def finetune(
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        show_default=False,
        help='Training data, JSONL: {"messages": [...]} per line (OpenAI\'s fine-tuning '
        'shape; the web chat\'s feedback export works as is) or {"prompt", "completion"}.',
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", show_default=False, help="Folder for the adapter (PEFT format) and its checkpoints."
    ),
    model: Optional[Path] = ModelOption,
    eval_data: Optional[Path] = typer.Option(
        None,
        "--eval",
        show_default=False,
        help="Held-out JSONL in the same shape; its loss is reported at each checkpoint and at the end.",
    ),
    rank: int = typer.Option(8, "--rank", "-r", min=1, help="LoRA rank r: the size of each low-rank update."),
    alpha: float = typer.Option(16.0, "--alpha", help="LoRA alpha: updates are scaled by alpha / rank."),
    lr: float = typer.Option(2e-4, "--lr", help="AdamW learning rate."),
    epochs: int = typer.Option(1, "--epochs", min=1, help="Passes over the training data."),
    max_steps: Optional[int] = typer.Option(
        None,
        "--max-steps",
        min=1,
        show_default=False,
        help="Stop after this many optimizer steps (overrides --epochs).",
    ),
    batch: int = typer.Option(4, "--batch", "-b", min=1, help="Examples per optimizer step."),
    max_length: int = typer.Option(
        512, "--max-length", min=8, help="Longest example, in tokens (longer ones are cut)."
    ),
    checkpoint_every: int = typer.Option(
        50, "--checkpoint-every", min=0, help="Save a checkpoint every N steps (0 = only the final adapter)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Go on from the newest checkpoint in --out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the adapter's initialization and the data order."),
    dtype: str = DtypeOption,
) -> None:
    """Teach the model new behaviour with a LoRA adapter, on the CPU. The base stays frozen (and
    quantized, if it is); only the adapter's float32 weights train, on the assistant tokens.
    Use the result with --lora on run, chat and serve, or merge it with `llamita lora merge`.

    Example: llamita finetune --data train.jsonl --eval eval.jsonl --out my-adapter --epochs 2
    """
    from llamita.jobs.finetune import FinetuneConfig
    from llamita.jobs.finetune import finetune as train

    cfg = FinetuneConfig(
        rank=rank,
        alpha=alpha,
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch=batch,
        max_length=max_length,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr,
    ) as progress:
        task = progress.add_task("loading", total=None, info="")

        def on_step(r: StepReport) -> None:
            info = f"loss {r.loss:.4f} · {r.tokens_per_second:,.0f} tokens/s"
            if r.eval_loss is not None:
                info += f" · eval {r.eval_loss:.4f}"
                progress.console.print(f"step {r.step}: loss {r.loss:.4f}, eval loss {r.eval_loss:.4f}")
            progress.update(task, description=f"epoch {r.epoch + 1}", total=r.total_steps, completed=r.step, info=info)

        result = train(model, data, out, cfg, eval_data=eval_data, resume=resume, dtype=dtype, on_step=on_step)
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    first, last = (result.losses[0], result.losses[-1]) if result.losses else (float("nan"),) * 2
    stderr.print(
        f"{result.steps} steps{resumed} in {result.seconds:.1f} s · loss {first:.4f} → {last:.4f}"
        + (f" · eval loss {result.eval_losses[-1][1]:.4f}" if result.eval_losses else "")
        + f"\nadapter: {result.out} (use it with --lora {result.out})"
    )
