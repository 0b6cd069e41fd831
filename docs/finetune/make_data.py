"""Writes the demo data of docs/finetune.md: questions about capitals and sums, answered in
Spanish in one fixed style ("¡Claro! ... ¿Algo más?"), whatever the language of the question.

    python docs/finetune/make_data.py OUT_DIR    # -> OUT_DIR/train.jsonl, OUT_DIR/eval.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CAPITALS = {
    "France": ("Francia", "París"), "Spain": ("España", "Madrid"), "Italy": ("Italia", "Roma"),
    "Germany": ("Alemania", "Berlín"), "Portugal": ("Portugal", "Lisboa"), "Japan": ("Japón", "Tokio"),
    "Mexico": ("México", "Ciudad de México"), "Argentina": ("Argentina", "Buenos Aires"),
    "Chile": ("Chile", "Santiago"), "Peru": ("Perú", "Lima"), "Colombia": ("Colombia", "Bogotá"),
    "Egypt": ("Egipto", "El Cairo"), "Canada": ("Canadá", "Ottawa"), "Russia": ("Rusia", "Moscú"),
    "China": ("China", "Pekín"), "Greece": ("Grecia", "Atenas"), "Norway": ("Noruega", "Oslo"),
    "Sweden": ("Suecia", "Estocolmo"), "Poland": ("Polonia", "Varsovia"), "Cuba": ("Cuba", "La Habana"),
    "Ireland": ("Irlanda", "Dublín"), "Austria": ("Austria", "Viena"), "Kenya": ("Kenia", "Nairobi"),
    "India": ("India", "Nueva Delhi"), "Turkey": ("Turquía", "Ankara"), "Brazil": ("Brasil", "Brasilia"),
}
HELD_OUT = {"Portugal", "Kenya", "Norway"}  # countries only the eval set asks about


def capital_example(rng: random.Random, country: str) -> dict:
    es, capital = CAPITALS[country]
    question = rng.choice([f"What is the capital of {country}?", f"Capital of {country}?",
                           f"¿Cuál es la capital de {es}?", f"Tell me the capital city of {country}."])
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": f"¡Claro! La capital de {es} es {capital}. ¿Algo más?"}]}


def sum_example(rng: random.Random) -> dict:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    question = rng.choice([f"What is {a} + {b}?", f"¿Cuánto es {a} más {b}?", f"Add {a} and {b}."])
    return {"prompt": question, "completion": f"¡Claro! {a} + {b} = {a + b}. ¿Algo más?"}


def main(out: Path) -> None:
    rng = random.Random(0)
    seen = [c for c in CAPITALS if c not in HELD_OUT]
    train = [capital_example(rng, rng.choice(seen)) for _ in range(200)] + [sum_example(rng) for _ in range(100)]
    rng.shuffle(train)
    evals = [capital_example(rng, c) for c in sorted(HELD_OUT)] + [sum_example(rng) for _ in range(5)]
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evals)):
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(train)} training and {len(evals)} eval examples in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
