"""`llamita finetune`: train a LoRA adapter on a frozen (possibly quantized) base, on the CPU.

Data is JSONL, one example a line: OpenAI's fine-tuning shape {"messages": [...]} (an assistant
message with "weight": 0 is context only; the web chat's feedback export, whose lines also carry
a "rating", is accepted and its thumbs-down answers are left out) or {"prompt", "completion"}
(taken as one user turn and its answer). The model's chat template renders each example, and
the loss is the mean cross-entropy of the assistant tokens only.

The adapter is float32 (A Kaiming-uniform, B zero, as PEFT starts it), trained with AdamW; the
base's compact weights are expanded per layer in the forward and backward passes
(TrainableCompactLinear). Checkpoints (adapter + optimizer + step) go to OUT/checkpoint-STEP
and a run started again with `resume` goes on from the newest one with the same data order.
The result in OUT is a PEFT adapter folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F

from llamita.engine.loader import LoadedModel, load_model
from llamita.errors import InvalidParameterError, ModelFileError
from llamita.model.lora_linear import install_adapter, lora_layers, make_compact_trainable
from llamita.tokenizer import Tokenizer
from llamita.weights.lora_files import PEFT_CONFIG, TARGET_MODULES, write_peft

STATE_FILE = "trainer_state.json"
ADAPTER = "finetune"  # the adapter's slot name while training


@dataclass(frozen=True)
class FinetuneConfig:
    """What `llamita finetune` trains. Lengths are tokens; lr is AdamW's learning rate."""

    rank: int = 8
    alpha: float = 16.0
    lr: float = 2e-4
    weight_decay: float = 0.0
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (None: all epochs)
    batch: int = 4  # examples per optimizer step
    max_length: int = 512  # longer examples are cut to this many tokens
    targets: tuple[str, ...] = TARGET_MODULES
    checkpoint_every: int = 50  # steps; 0: only the final adapter
    seed: int = 0


@dataclass
class Example:
    ids: list[int]
    loss_mask: list[bool]  # True where the token is an assistant token (a target)

    @property
    def n_targets(self) -> int:
        return sum(self.loss_mask)


@dataclass
class StepReport:
    step: int
    total_steps: int
    epoch: int
    loss: float
    tokens: int  # tokens in the step's batch
    tokens_per_second: float
    eval_loss: float | None = None


@dataclass
class FinetuneResult:
    out: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # training loss of every step run here
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss)
    resumed_from: int = 0
    seconds: float = 0.0


# -- data -----------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelFileError(f"training data not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InvalidParameterError("data", f"{p}:{n}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise InvalidParameterError("data", f"{p}:{n}: each line must be a JSON object")
        rows.append(row)
    return rows


def _messages(row: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    if "messages" in row:
        if isinstance(row.get("rating"), (int, float)) and row["rating"] < 0:
            return None  # a thumbs-down answer from the web chat's feedback export
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise InvalidParameterError("data", f"{where}: 'messages' must be a list of {{role, content}}")
        return msgs
    if "prompt" in row and "completion" in row:
        return [
            {"role": "user", "content": str(row["prompt"])},
            {"role": "assistant", "content": str(row["completion"])},
        ]
    raise InvalidParameterError("data", f"{where}: expected 'messages' or 'prompt' and 'completion'")


def encode_example(
    tokenizer: Tokenizer, messages: list[dict[str, Any]], max_length: int, where: str = "example"
) -> Example | None:
    """Token ids of the whole chat and which of them are assistant tokens (the turn's text and
    its end-of-turn marker, as the template writes them after the generation prompt)."""
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    ids: list[int] = []
    mask: list[bool] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.encode_chat(clean[:i], add_generation_prompt=True)
        full = tokenizer.encode_chat(clean[: i + 1], add_generation_prompt=False)
        if full[: len(ids)] != ids or full[: len(prefix)] != prefix:
            raise InvalidParameterError(
                "data", f"{where}: the chat template does not render a conversation as the prefix of its continuation"
            )
        mask += [False] * (len(prefix) - len(ids)) + [m.get("weight", 1) != 0] * (len(full) - len(prefix))
        ids = full
    if not any(mask):
        return None
    return Example(ids[:max_length], mask[:max_length])


def load_examples(path: str | os.PathLike[str], tokenizer: Tokenizer, max_length: int) -> list[Example]:
    examples = []
    for n, row in enumerate(read_jsonl(path), 1):
        where = f"{path}:{n}"
        msgs = _messages(row, where)
        if msgs is None:
            continue
        ex = encode_example(tokenizer, msgs, max_length, where)
        if ex is not None and ex.n_targets:
            examples.append(ex)
    if not examples:
        raise InvalidParameterError("data", f"{path}: no example with an assistant answer to learn")
    return examples


def batch_tensors(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, S) right-padded, and targets (B, S) = the next token where it is an assistant
    token, else -100 (ignored). Padding at the end never reaches earlier positions (causal)."""
    width = max(len(e.ids) for e in examples)
    tokens = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), -100, dtype=torch.long)
    for b, e in enumerate(examples):
        ids = torch.tensor(e.ids)
        tokens[b, : len(e.ids)] = ids
        keep = torch.tensor(e.loss_mask[1:])
        targets[b, : len(e.ids) - 1] = torch.where(keep, ids[1:], -100)
    return tokens, targets


# -- training -------------------------------------------------------------------------------
class _Linear(Protocol):
    """What a LoRA target is (nn.Linear, Int4Linear, Int8Linear...): nn.Module's __getattr__
    types its sizes as Tensor | Module."""

    in_features: int
    out_features: int


def _init_adapter(loaded: LoadedModel, cfg: FinetuneConfig) -> None:
    """PEFT's initialization: A ~ Kaiming-uniform(a=√5), B = 0, in float32, scale alpha/r."""
    g = torch.Generator().manual_seed(cfg.seed)
    names = {n.removesuffix(".weight") for n in _linear_names(loaded, cfg.targets)}
    weights = {}
    for name in sorted(names):
        module = cast(_Linear, loaded.model.get_submodule(name))
        bound = 1.0 / math.sqrt(module.in_features)  # kaiming_uniform_(a=√5) on (r, in)
        a = (torch.rand(cfg.rank, module.in_features, generator=g) * 2 - 1) * bound
        weights[name] = (a, torch.zeros(module.out_features, cfg.rank), cfg.alpha / cfg.rank)
    install_adapter(loaded.model, ADAPTER, weights, trainable=True)


def _linear_names(loaded: LoadedModel, targets: tuple[str, ...]) -> list[str]:
    unknown = set(targets) - set(TARGET_MODULES)
    if unknown:
        raise InvalidParameterError("targets", f"unknown {sorted(unknown)}; choose from {', '.join(TARGET_MODULES)}")
    return [
        f"layers.{i}.{part}.{t}"
        for i in range(loaded.config.n_layers)
        for part, ts in (
            ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        )
        for t in ts
        if t in targets
    ]


def _adapter_tensors(loaded: LoadedModel, cfg: FinetuneConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A and B as PEFT stores them: B without the folded scale."""
    scale = cfg.alpha / cfg.rank
    out = {}
    for name, layer in lora_layers(loaded.model).items():
        slot = str(loaded.model.lora.slot(ADAPTER))
        out[name] = (layer.lora_A[slot].detach(), layer.lora_B[slot].detach() / scale)
    return out


def _loss(loaded: LoadedModel, examples: list[Example], pad_id: int) -> tuple[torch.Tensor, int]:
    tokens, targets = batch_tensors(examples, pad_id)
    tokens, targets = tokens.to(loaded.device), targets.to(loaded.device)
    slots = torch.zeros(len(examples), dtype=torch.long, device=loaded.device)
    logits = loaded.model(tokens, adapters=slots)  # (B, S, V) float32
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return loss, int(tokens.numel())


def evaluate(loaded: LoadedModel, examples: list[Example], batch: int, pad_id: int) -> float:
    """Mean loss per assistant token over `examples`."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            part = examples[i : i + batch]
            loss, _ = _loss(loaded, part, pad_id)
            n = sum(e.n_targets - (1 if e.loss_mask[0] else 0) for e in part)
            total += float(loss) * n
            count += n
    return total / max(count, 1)


def _order(n: int, epoch: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1000003 + epoch).shuffle(order)
    return order


def _batches(n_examples: int, cfg: FinetuneConfig) -> Iterator[tuple[int, list[int]]]:
    """(epoch, example indices) of every optimizer step, in order; the same for every run."""
    for epoch in range(cfg.epochs if cfg.max_steps is None else 10**9):
        order = _order(n_examples, epoch, cfg.seed)
        for i in range(0, n_examples, cfg.batch):
            yield epoch, order[i : i + cfg.batch]


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(
        (p for p in out.glob("checkpoint-*") if (p / STATE_FILE).is_file()),
        key=lambda p: int(p.name.rpartition("-")[2]),
    )
    return found[-1] if found else None


def finetune(
    model: str | os.PathLike[str] | None,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cfg: FinetuneConfig = FinetuneConfig(),
    *,
    eval_data: str | os.PathLike[str] | None = None,
    resume: bool = False,
    dtype: str = "auto",
    on_step: Callable[[StepReport], None] | None = None,
) -> FinetuneResult:
    """Train a LoRA adapter for `model` on `data`; write it to `out` as a PEFT folder."""
    if cfg.rank < 1 or cfg.batch < 1 or cfg.lr <= 0 or cfg.epochs < 1:
        raise InvalidParameterError("finetune", "rank, batch and epochs must be >= 1 and lr > 0")
    out = Path(out).expanduser()
    loaded = load_model(model, dtype=dtype)
    tokenizer = loaded.tokenizer
    train = load_examples(data, tokenizer, cfg.max_length)
    evals = load_examples(eval_data, tokenizer, cfg.max_length) if eval_data else []
    pad_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0  # never a target
    make_compact_trainable(loaded.model)
    _init_adapter(loaded, cfg)
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch)
    total = cfg.max_steps if cfg.max_steps is not None else steps_per_epoch * cfg.epochs
    result = FinetuneResult(out, 0)
    start_step = 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        start_step = _restore(loaded, optimizer, ckpt)
        result.resumed_from = start_step
    t_start = time.perf_counter()
    loaded.model.train()
    step = start_step
    for step_index, (epoch, indices) in enumerate(_batches(len(train), cfg)):
        if step_index >= total:
            break
        if step_index < start_step:
            continue  # done before the interruption: same order, skipped
        t0 = time.perf_counter()
        loss, n_tokens = _loss(loaded, [train[i] for i in indices], pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step = step_index + 1
        report = StepReport(
            step, total, epoch, float(loss.detach()), n_tokens, n_tokens / max(time.perf_counter() - t0, 1e-9)
        )
        result.losses.append(report.loss)
        last = step == total
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or last:
            if evals:
                report.eval_loss = evaluate(loaded, evals, cfg.batch, pad_id)
                result.eval_losses.append((step, report.eval_loss))
            if cfg.checkpoint_every and not last:
                _save_checkpoint(loaded, optimizer, cfg, out, step, model)
        if on_step is not None:
            on_step(report)
    loaded.model.eval()
    write_peft(
        out,
        _adapter_tensors(loaded, cfg),
        cfg.rank,
        cfg.alpha,
        base_model=os.fspath(loaded.path),
        extra={"llamita": {"steps": step, **_cfg_json(cfg)}},
    )
    result.steps = step
    result.seconds = time.perf_counter() - t_start
    return result


def _cfg_json(cfg: FinetuneConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["targets"] = list(cfg.targets)
    return d


def _save_checkpoint(
    loaded: LoadedModel, optimizer: torch.optim.Optimizer, cfg: FinetuneConfig, out: Path, step: int, model: Any
) -> None:
    """OUT/checkpoint-STEP: the adapter (PEFT), the optimizer state and the step, written to a
    temporary folder renamed into place, so a checkpoint on disk is always whole."""
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    write_peft(tmp, _adapter_tensors(loaded, cfg), cfg.rank, cfg.alpha, base_model=os.fspath(loaded.path))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "config": _cfg_json(cfg)}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _restore(loaded: LoadedModel, optimizer: torch.optim.Optimizer, ckpt: Path) -> int:
    from safetensors.torch import load_file

    state = json.loads((ckpt / STATE_FILE).read_text())
    tensors = load_file(str(ckpt / "adapter_model.safetensors"))
    config = json.loads((ckpt / PEFT_CONFIG).read_text())
    scale = config["lora_alpha"] / config["r"]
    slot = str(loaded.model.lora.slot(ADAPTER))
    with torch.no_grad():
        for name, layer in lora_layers(loaded.model).items():
            prefix = f"base_model.model.model.{name}"
            layer.lora_A[slot].copy_(tensors[prefix + ".lora_A.weight"])
            layer.lora_B[slot].copy_(tensors[prefix + ".lora_B.weight"] * scale)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    return int(state["step"])
