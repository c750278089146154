"""Does a LoRA export behave like the patch it stands for? (KL on the vector's shots)

A truncated SVD keeps most of each module's spectral energy, yet small
per-module errors add up over 30 blocks: an adapter at 10 % relative error can
undo a patch's refusals. So an export is judged by behaviour, not by matrix
error: the model with the exact deltas (``W + λ v``, what ``patch`` writes)
and the model with the adapter's deltas (``W + B A``) are run on the same
shots, and the mean per-token ``KL(exact ‖ adapter)`` over their real tokens
must stay within :data:`KL_TOLERANCE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.func import functional_call

from ..evaluation.probes import Probe
from ..evaluation.textio import (
    collate,
    encode_example,
    encode_prompt,
    load_model,
    load_tokenizer,
    pad_id_of,
)

KL_TOLERANCE = 0.01  # nats per token, the mean over the shots' tokens
_MAX_SHOTS = 64
_MAX_TOKENS = 128


@torch.no_grad()
def behaviour_gap(model_dir: str | Path, shots: Sequence[Probe], exact: dict[str, torch.Tensor],
                  approx: dict[str, torch.Tensor], *, batch_size: int = 8) -> float:  # fmt: skip
    """Mean per-token KL(model + ``exact`` ‖ model + ``approx``) over the shots' tokens.

    Args:
        model_dir: the checkpoint the deltas apply to.
        shots: prompts (with their responses when given) to compare on; at most 64 are used.
        exact, approx: weight deltas by tensor name, in the checkpoint's layout.
        batch_size: sequences per forward.

    Returns:
        The mean KL in nats per token (0 when the two agree).
    """
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    params = dict(model.named_parameters())
    pad = pad_id_of(tok)
    examples = []
    for p in list(shots)[:_MAX_SHOTS]:
        ids = encode_example(tok, p.prompt, p.response)[0] if p.response else encode_prompt(tok, p.prompt)
        examples.append((ids[:_MAX_TOKENS], ids[:_MAX_TOKENS]))

    def patched(deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: (params[n].float() + d.float()).to(params[n].dtype) for n, d in deltas.items()}

    with_exact, with_approx = patched(exact), patched(approx)
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size], pad, side="right")
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        mask = batch["attention_mask"].bool()
        p = functional_call(model, with_exact, args=(), kwargs=kw).logits[mask].float().log_softmax(-1)
        q = functional_call(model, with_approx, args=(), kwargs=kw).logits[mask].float().log_softmax(-1)
        total += float((p.exp() * (p - q)).sum())
        count += int(mask.sum())
    return total / max(count, 1)
