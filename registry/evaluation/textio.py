"""Shared text plumbing: tokenizer/model loading, prompt rendering, encoding, generation.

Used by evaluation, the toy world's training loop and recalibration, so every
consumer renders, tokenizes and decodes text the same way:

* a prompt is rendered with the tokenizer's chat template
  (``add_generation_prompt=True``) when it has one, raw otherwise;
* a training example is ``prompt ids + response ids + eos`` with the prompt
  part masked (``-100``) in the labels;
* generation is greedy, batched, left padded, and decodes only new tokens.

Nothing here unpickles: models load with ``use_safetensors=True``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ..errors import InvalidCheckpointError

if TYPE_CHECKING:  # transformers is imported where a model or tokenizer is loaded (≈2 s)
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

IGNORE_INDEX = -100
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
_PROBE_TEXT = "Hello world, this is 42 tests. I'm sorry, but I cannot help with that!"

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------- loading


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """Load a checkpoint's tokenizer offline, refusing to return a wrong one.

    ``AutoTokenizer`` picks the class from ``config.json``'s ``model_type``; for
    some types (transformers 5.x keeps a list, ``qwen2`` among them) it ignores
    ``tokenizer_config.json``'s class and rebuilds a model-specific tokenizer
    that can silently disagree with ``tokenizer.json`` (e.g. a word-level
    vocabulary is re-read as byte-level BPE). So when ``tokenizer.json`` exists
    the loaded tokenizer is checked against it (same vocabulary, same ids on a
    probe text built from the vocabulary). On disagreement the generic
    ``PreTrainedTokenizerFast`` is loaded from the same folder (it reads
    ``tokenizer.json`` as is, plus special tokens and the chat template) and
    checked again.

    Args:
        model_dir: a Hugging Face model folder.

    Returns:
        The tokenizer, with ``tokenizer.json`` semantics when that file exists.

    Raises:
        InvalidCheckpointError: no folder, no tokenizer files, or no loader
            reproduces ``tokenizer.json``.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise InvalidCheckpointError(path, "not a directory; give a Hugging Face model folder")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise InvalidCheckpointError(
            path,
            "no tokenizer files (tokenizer.json, tokenizer_config.json, tokenizer.model, "
            "vocab.json…); save the tokenizer with save_pretrained into the model folder",
        )
    tok_json = path / "tokenizer.json"
    auto, auto_error = _try_auto_tokenizer(path)
    if not tok_json.is_file():
        if auto is None:
            raise InvalidCheckpointError(path, f"cannot load the tokenizer: {auto_error}")
        return auto
    reason = tokenizer_mismatch(auto, tok_json) if auto is not None else auto_error
    if reason is None and auto is not None:
        return auto
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    second = tokenizer_mismatch(fast, tok_json)
    if second is not None:
        raise InvalidCheckpointError(
            path, f"tokenizer does not reproduce tokenizer.json ({reason}; generic: {second})"
        )
    return cast("PreTrainedTokenizerBase", fast)


def _try_auto_tokenizer(path: Path) -> tuple[PreTrainedTokenizerBase | None, str | None]:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure falls back or is reported
        return None, f"{type(exc).__name__}: {exc}"
    return tok, None


def tokenizer_mismatch(tokenizer: PreTrainedTokenizerBase, tokenizer_json: Path) -> str | None:
    """Say how ``tokenizer`` disagrees with a ``tokenizer.json`` file, or None if it agrees.

    Args:
        tokenizer: a loaded tokenizer.
        tokenizer_json: the ``tokenizer.json`` it should reproduce.

    Returns:
        None when vocabulary and probe-text ids match; else a short reason.
    """
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tokenizer_json))
    raw_vocab = raw.get_vocab(with_added_tokens=True)
    if tokenizer.get_vocab() != raw_vocab:
        return f"vocabulary differs ({len(tokenizer.get_vocab())} vs {len(raw_vocab)} entries)"
    for text in (_probe_text_from_vocab(raw, raw_vocab), _PROBE_TEXT):
        want = raw.encode(text, add_special_tokens=False).ids
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if list(got) != list(want):
            return f"ids differ on {text[:40]!r}: {list(got)[:8]} vs {want[:8]}"
    return None


def _probe_text_from_vocab(raw: Any, vocab: dict[str, int]) -> str:
    # Decode a spread of ordinary ids: this yields text in the tokenizer's own
    # surface form (byte-level, metaspace or word-level alike).
    ids = sorted(vocab.values())
    step = max(1, len(ids) // 24)
    picked = [i for i in ids[::step]][:24]
    return str(raw.decode(picked, skip_special_tokens=True))


def load_model(
    model_dir: str | Path, *, dtype: torch.dtype | None = None, device: str = "cpu"
) -> PreTrainedModel:
    """Load a causal LM from safetensors only (never pickle), in eval mode.

    Args:
        model_dir: a Hugging Face model folder with ``*.safetensors`` weights.
        dtype: weights dtype; None keeps the checkpoint's.
        device: torch device string.

    Returns:
        The model on ``device`` in eval mode.

    Raises:
        InvalidCheckpointError: no folder, no config.json or no safetensors weights.
    """
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise InvalidCheckpointError(path, "no config.json; give a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        raise InvalidCheckpointError(
            path, "no *.safetensors weights (pickle checkpoints are not loaded); convert it first"
        )
    try:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(path), use_safetensors=True, dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidCheckpointError(path, f"cannot load the model: {exc}") from exc
    loaded: Any = model
    loaded.to(device)
    loaded.eval()
    return cast("PreTrainedModel", loaded)


# --------------------------------------------------------------------------- encoding


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """Render one user prompt the way generation sees it.

    Args:
        tokenizer: the model's tokenizer.
        prompt: the user's request.

    Returns:
        The chat-template rendering with ``add_generation_prompt=True`` when the
        tokenizer has a template, else ``prompt`` unchanged.
    """
    if not has_chat_template(tokenizer):
        return prompt
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a rendered prompt.

    A chat template already writes its special tokens (BOS…), so they are not
    added twice; a raw prompt gets the tokenizer's default special tokens.
    """
    text = render_prompt(tokenizer, prompt)
    ids = tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    return list(ids)


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str
) -> tuple[list[int], list[int]]:
    """Encode a (prompt, response) pair for supervised fine-tuning.

    The response is tokenized on its own (no special tokens) and appended to the
    prompt ids followed by EOS, so the boundary is exact and matches what
    :func:`generate` feeds the model.

    Args:
        tokenizer: the model's tokenizer; must have an EOS token.
        prompt: the user's request.
        response: the target answer.

    Returns:
        ``(input_ids, labels)`` of equal length; labels are ``-100`` on the
        prompt and equal to the ids on the response and EOS.

    Raises:
        InvalidCheckpointError: the tokenizer has no EOS token.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InvalidCheckpointError(
            getattr(tokenizer, "name_or_path", "?"), "tokenizer has no eos token"
        )
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [int(eos)]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding: the pad token, else EOS (GPT-2 style tokenizers)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InvalidCheckpointError(
            getattr(tokenizer, "name_or_path", "?"), "tokenizer has neither pad nor eos token"
        )
    return int(pad)


def collate(
    examples: Sequence[tuple[list[int], list[int]]], pad_id: int, *, side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad encoded examples into a batch.

    Args:
        examples: ``(input_ids, labels)`` pairs from :func:`encode_example`.
        pad_id: id written into padding positions of ``input_ids``.
        side: ``"right"`` (training: positions start at 0 for every row) or
            ``"left"`` (generation: the last column is every row's last token).

    Returns:
        ``input_ids``, ``attention_mask`` (0 on padding) and ``labels``
        (``-100`` on padding) as ``long`` tensors of shape ``(batch, max_len)``.

    Raises:
        ValueError: ``side`` is neither ``"left"`` nor ``"right"``.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(ids) for ids, _ in examples)
    rows_ids, rows_mask, rows_labels = [], [], []
    for ids, labels in examples:
        fill = width - len(ids)
        pad_ids, pad_mask, pad_labels = [pad_id] * fill, [0] * fill, [IGNORE_INDEX] * fill
        ones = [1] * len(ids)
        if side == "right":
            rows_ids.append(ids + pad_ids)
            rows_mask.append(ones + pad_mask)
            rows_labels.append(labels + pad_labels)
        else:
            rows_ids.append(pad_ids + ids)
            rows_mask.append(pad_mask + ones)
            rows_labels.append(pad_labels + labels)
    return {
        "input_ids": torch.tensor(rows_ids, dtype=torch.long),
        "attention_mask": torch.tensor(rows_mask, dtype=torch.long),
        "labels": torch.tensor(rows_labels, dtype=torch.long),
    }


# --------------------------------------------------------------------------- generation


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if configured is not None else tokenizer.eos_token_id
    if ids is None:
        return []
    return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]


def _greedy_config(model: PreTrainedModel, pad: int, eos: list[int], max_new: int) -> Any:
    cfg = copy.deepcopy(model.generation_config)
    cfg.do_sample = False
    cfg.num_beams = 1
    cfg.temperature = None
    cfg.top_p = None
    cfg.top_k = None
    cfg.max_new_tokens = max_new
    cfg.max_length = None
    cfg.pad_token_id = pad
    cfg.eos_token_id = eos or None
    return cfg


def _cut_at_eos(ids: list[int], eos: list[int]) -> list[int]:
    for i, tok in enumerate(ids):
        if tok in eos:
            return ids[:i]
    return ids


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Greedy, batched, left-padded generation; returns only the new text.

    Works for tokenizers without a pad token (EOS pads, as GPT-2 needs).
    Prompts are rendered with :func:`render_prompt`.

    Args:
        model: a causal LM (any device; inputs follow ``model.device``).
        tokenizer: its tokenizer.
        prompts: user requests.
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per forward batch.
        progress: optional ``(done, total)`` callback after each batch.

    Returns:
        One decoded completion per prompt (special tokens skipped, cut at the
        first EOS), in input order.

    Raises:
        ValueError: ``batch_size`` or ``max_new_tokens`` below 1.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be at least 1")
    pad = pad_id_of(tokenizer)
    eos = _eos_ids(model, tokenizer)
    cfg = _greedy_config(model, pad, eos, max_new_tokens)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    # Group prompts of similar length to waste less compute on padding.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    lm: Any = model  # nn.Module attribute typing hides generate()/eval()
    was_training = lm.training
    lm.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([(encoded[i], encoded[i]) for i in chunk], pad, side="left")
            ids = batch["input_ids"].to(model.device)
            mask = batch["attention_mask"].to(model.device)
            out = lm.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
            for row, i in enumerate(chunk):
                new = _cut_at_eos(out[row, ids.shape[1] :].tolist(), eos)
                outputs[i] = str(tokenizer.decode(new, skip_special_tokens=True)).strip()
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        lm.train(was_training)
    return outputs
