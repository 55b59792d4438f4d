"""Adapters on the vocabulary matrices: an adapter's own ``embed_tokens`` / ``lm_head``
(``modules_to_save``, or the base copies PEFT saves beside LoRA on them, which differ when the
vocabulary was retrained), LoRA on them, and retrained rows of a few tokens
(``trainable_token_indices``: new embedding rows, and the same rows of a tied LM head), read from
a PEFT file and applied per row of a mixed batch — rows of other adapters and of the base model
keep the base matrices."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loraserve.errors import BadRequestError
from loraserve.model.args import ModelArgs

VOCAB_MODULES = ("embed_tokens", "lm_head")
VOCAB_KEY = re.compile(
    r"(?:^|\.)(embed_tokens|lm_head)\.(weight|base_layer\.weight|lora_embedding_[AB]|"
    r"lora_[AB]\.weight|token_adapter\.trainable_tokens_delta)$"
)


@dataclass(slots=True)
class VocabParts:
    embed: torch.Tensor | None = None  # (V, H) this adapter's embedding matrix
    embed_lora: tuple[torch.Tensor, torch.Tensor] | None = None  # A^T (V, r), scaling * B^T (r, H)
    head: torch.Tensor | None = None  # (V, H) this adapter's LM head
    head_lora: tuple[torch.Tensor, torch.Tensor] | None = None  # A (r, H), scaling * B (V, r)
    tokens: tuple[torch.Tensor, torch.Tensor] | None = None  # token ids (n,), their new rows (n, H)
    tokens_in_head: bool = False  # a tied head: the LM head's rows of those tokens are the new rows

    def tensors(self) -> list[torch.Tensor]:
        parts = [
            self.embed,
            self.head,
            *(self.embed_lora or ()),
            *(self.head_lora or ()),
            *(self.tokens or ()),
        ]
        return [t for t in parts if t is not None]

    @property
    def changes_embed(self) -> bool:
        return self.embed is not None or self.embed_lora is not None or self.tokens is not None

    @property
    def changes_head(self) -> bool:
        return self.head is not None or self.head_lora is not None or self.tokens_in_head

    def to(self, device: torch.device) -> VocabParts:
        def pair(p: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
            return None if p is None else (p[0].to(device), p[1].to(device))

        return VocabParts(
            None if self.embed is None else self.embed.to(device),
            pair(self.embed_lora),
            None if self.head is None else self.head.to(device),
            pair(self.head_lora),
            pair(self.tokens),
            self.tokens_in_head,
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


ScalingOf = Callable[[str], tuple[int, float]]  # a module key → (rank, scaling), PEFT's rules


def read_vocab_parts(
    tensors: dict[str, torch.Tensor], config: dict, args: ModelArgs, dtype: torch.dtype, scaling_of: ScalingOf
) -> VocabParts | None:
    """The vocabulary parts of an adapter file, taken out of ``tensors``; a refusal (naming the
    tensor or setting) for what cannot be served exactly."""
    found: dict[tuple[str, str], torch.Tensor] = {}
    for key in [k for k in tensors if VOCAB_KEY.search(k)]:
        match = VOCAB_KEY.search(key)
        assert match is not None
        if (match.group(1), match.group(2)) in found:
            raise BadRequestError(f"tensor {key} names {match.group(1)}'s {match.group(2)} a second time")
        found[(match.group(1), match.group(2))] = tensors.pop(key)
    saved = set(config.get("modules_to_save") or ())
    if not found:
        _read_trainable_tokens(found, config, args, dtype, VocabParts())  # refuses indices without rows
        if saved:
            raise BadRequestError(
                f"modules_to_save names {', '.join(sorted(saved))} but the file holds no "
                f"{sorted(saved)[0]}.weight"
            )
        return None
    if args.embed_scale is not None:
        raise BadRequestError(
            f"adapters on embed_tokens / lm_head are not supported for {args.architecture} "
            "yet (its embeddings are scaled); target the decoder layers only"
        )
    vocab, hidden = args.vocab_size, args.hidden_size
    parts = VocabParts()
    for module in VOCAB_MODULES:
        whole = found.get((module, "weight"))
        if whole is not None and module not in saved:
            raise BadRequestError(f"the file holds a full {module} but modules_to_save does not name it")
        if whole is None and module in saved:
            raise BadRequestError(f"modules_to_save names {module} but the file holds no {module}.weight")
        whole = found.get((module, "base_layer.weight"), whole)  # PEFT's copy beside LoRA on it
        if whole is not None:
            _shape(module, whole, (vocab, hidden))
            setattr(parts, "embed" if module == "embed_tokens" else "head", _checked(module, whole.to(dtype)))
    embed = _lora_pair(
        found,
        "embed_tokens",
        ("lora_embedding_A", "lora_embedding_B"),
        "model.embed_tokens",
        vocab,
        hidden,
        scaling_of,
    )
    if embed is not None:  # PEFT's Embedding: a lookup in A^T (V, r), then scaling * B^T (r, H)
        a, b, scaling = embed
        parts.embed_lora = (
            _checked("embed_tokens lora", a.t().contiguous().to(dtype)),
            _checked("embed_tokens lora", (b.float().t() * scaling).to(dtype)),
        )
    head = _lora_pair(
        found, "lm_head", ("lora_A.weight", "lora_B.weight"), "lm_head", hidden, vocab, scaling_of
    )
    if head is not None:  # a Linear: A (r, H), scaling * B (V, r)
        a, b, scaling = head
        parts.head_lora = (
            _checked("lm_head lora", a.to(dtype)),
            _checked("lm_head lora", (b.float() * scaling).to(dtype)),
        )
    _read_trainable_tokens(found, config, args, dtype, parts)
    return parts


def _read_trainable_tokens(
    found: dict[tuple[str, str], torch.Tensor],
    config: dict,
    args: ModelArgs,
    dtype: torch.dtype,
    parts: VocabParts,
) -> None:
    """PEFT's TrainableTokens: the embedding rows of the listed token ids are replaced by the
    saved values (and, the head being tied, the same rows of the LM head)."""
    delta = found.get(("embed_tokens", "token_adapter.trainable_tokens_delta"))
    indices = config.get("trainable_token_indices")
    if ("lm_head", "token_adapter.trainable_tokens_delta") in found:
        raise BadRequestError(
            "trainable_token_indices on lm_head is not supported; train them on embed_tokens"
        )
    if delta is None:
        if indices:
            raise BadRequestError(
                "trainable_token_indices is set but the file holds no "
                "embed_tokens.token_adapter.trainable_tokens_delta"
            )
        return
    if isinstance(indices, dict):  # {module name: ids}: only the input embedding is served
        if set(indices) != {"embed_tokens"}:
            raise BadRequestError(
                f"trainable_token_indices names {sorted(indices)}; only embed_tokens is served"
            )
        indices = indices["embed_tokens"]
    if (
        not isinstance(indices, list)
        or not indices
        or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < args.vocab_size for i in indices
        )
        or len(set(indices)) != len(indices)
    ):
        raise BadRequestError(
            f"trainable_token_indices must list distinct token ids below the vocabulary size "
            f"{args.vocab_size}, got {indices!r}"
        )
    if parts.embed is not None or parts.embed_lora is not None:
        raise BadRequestError(
            "trainable_token_indices together with a full or LoRA embed_tokens is not supported"
        )
    _shape("embed_tokens trainable_tokens_delta", delta, (len(indices), args.hidden_size))
    tied = args.tie_word_embeddings
    if tied and (parts.head is not None or parts.head_lora is not None):
        raise BadRequestError(
            "trainable_token_indices on a tied model together with an lm_head adapter is not supported"
        )
    parts.tokens = (torch.tensor(indices, dtype=torch.long), _checked("trainable tokens", delta.to(dtype)))
    parts.tokens_in_head = tied


def _lora_pair(
    found: dict[tuple[str, str], torch.Tensor],
    module: str,
    names: tuple[str, str],
    key: str,
    fan_in: int,
    fan_out: int,
    scaling_of: ScalingOf,
) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """A (r, fan_in), B (fan_out, r) and the scaling of LoRA on ``module``, or None without it."""
    a, b = found.get((module, names[0])), found.get((module, names[1]))
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise BadRequestError(f"{module} has only one of {names[0]} / {names[1]}")
    rank, scaling = scaling_of(key)
    _shape(f"{module} {names[0]}", a, (rank, fan_in))
    _shape(f"{module} {names[1]}", b, (fan_out, rank))
    return a, b, scaling


def _shape(what: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise BadRequestError(
            f"{what}: shape {tuple(tensor.shape)} does not fit the model (expected {expected})"
        )


def _checked(what: str, tensor: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(tensor).all()):
        raise BadRequestError(f"{what} holds non-finite values (NaN or inf) in {tensor.dtype}")
    return tensor


class VocabSlots:
    """The vocabulary parts of the adapters resident in LoRA slots (references, not copies)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.parts: dict[int, VocabParts] = {}

    def load(self, slot: int, parts: VocabParts | None) -> None:
        self.parts.pop(slot, None)
        if parts is not None:
            self.parts[slot] = parts.to(self.device)

    def clear(self, slot: int) -> None:
        self.parts.pop(slot, None)

    def embed(self, h: torch.Tensor, ids: torch.Tensor, token_slots: torch.Tensor) -> None:
        """h (T, H), the base embeddings of ``ids``: rows of adapters with vocabulary parts get
        theirs, in place."""
        for slot, parts in self.parts.items():
            if not parts.changes_embed:
                continue
            rows = (token_slots == slot).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            picked = ids.index_select(0, rows)
            values = parts.embed[picked] if parts.embed is not None else h.index_select(0, rows)
            if parts.embed_lora is not None:
                a_t, b_t = parts.embed_lora
                values = values + (a_t[picked] @ b_t).to(values.dtype)
            if parts.tokens is not None:  # the retrained tokens' rows replace theirs
                token_ids, new_rows = parts.tokens
                match = picked[:, None] == token_ids[None, :]  # (n, tokens)
                hit = match.any(1)
                values[hit] = new_rows[match[hit].int().argmax(1)].to(values.dtype)
            h.index_copy_(0, rows, values)

    def head(self, logits: torch.Tensor, last: torch.Tensor, row_slots: torch.Tensor) -> None:
        """logits (N, V) of the normed last hidden states ``last`` (N, H): rows of adapters with
        an LM head or LoRA on it get theirs, in place."""
        for slot, parts in self.parts.items():
            if not parts.changes_head:
                continue
            rows = (row_slots == slot).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            x = last.index_select(0, rows)
            values = F.linear(x, parts.head) if parts.head is not None else logits.index_select(0, rows)
            if parts.head_lora is not None:
                a, b = parts.head_lora
                values = values + ((x @ a.t()) @ b.t()).to(values.dtype)
            if parts.tokens_in_head and parts.tokens is not None:
                token_ids, new_rows = parts.tokens
                values[:, token_ids] = F.linear(x, new_rows).to(values.dtype)
            logits.index_copy_(0, rows, values)


def merged_vocab(
    base_embed: torch.Tensor, base_head: torch.Tensor, parts: VocabParts
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding, LM head) with ``parts`` folded in, as new tensors (merged mode)."""
    embed = parts.embed if parts.embed is not None else base_embed
    if parts.embed_lora is not None:
        a_t, b_t = parts.embed_lora
        embed = (embed.float() + a_t.float() @ b_t.float()).to(base_embed.dtype)
    head = parts.head if parts.head is not None else base_head
    if parts.head_lora is not None:
        a, b = parts.head_lora
        head = (head.float() + b.float() @ a.float()).to(base_head.dtype)
    if parts.tokens is not None:
        token_ids, new_rows = parts.tokens
        embed = embed.index_copy(0, token_ids.to(embed.device), new_rows.to(embed))
        if parts.tokens_in_head:
            head = head.index_copy(0, token_ids.to(head.device), new_rows.to(head))
    return embed.to(base_embed.device), head.to(base_head.device)
