"""What a weight reader hands the model for one tensor: a dense tensor, or one of the compact
forms the model keeps as they are (packed int4, int8 per row, a GGUF-encoded embedding table)."""

from __future__ import annotations

import torch

from llamita.kernels.encoded_rows import EncodedRows
from llamita.kernels.int4 import Int4Weight
from llamita.kernels.int8 import Int8Weight

StateValue = torch.Tensor | Int4Weight | Int8Weight | EncodedRows
StateDict = dict[str, StateValue]  # canonical name ("layers.0.mlp.up_proj.weight") -> weight
