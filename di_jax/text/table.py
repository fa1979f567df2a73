"""A small prompt set held on the devices, sampled inside a jitted step (the digits demo's prompts).

    table = prompt_table(PromptEmbeddings(path))
    cond, labels, rows = sample_prompts(table, jax.random.fold_in(key, LABELS), batch, drop_prob=0.1)

Large sets (PixArt's 120 × 4096 T5 states, ~1 MB a prompt) stream from the host instead
(`PromptEmbeddings.batch`).
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from di_jax.teachers.discrete import TextCondition


class PromptTable(NamedTuple):
    """Every prompt of a set plus its null prompt, as device arrays (a pytree)."""
    embeddings: jax.Array    # [N, L, C]
    mask: jax.Array          # [N, L] float32
    label: jax.Array         # [N] int32 (-1 for unlabelled sets)
    null_embeddings: jax.Array   # [1, L, C]
    null_mask: jax.Array         # [1, L]


def prompt_table(ds, dtype: Any = jnp.float32) -> PromptTable:
    """The rows and null prompt of a `PromptEmbeddings` directory (loaded whole: small sets only)."""
    rows = ds.load_all()
    null_e, null_m = ds.null()
    label = rows.label if rows.label is not None else -jnp.ones(len(ds), jnp.int32)
    return PromptTable(jnp.asarray(rows.embeddings, dtype), jnp.asarray(rows.mask), jnp.asarray(label, jnp.int32),
                       jnp.asarray(null_e, dtype), jnp.asarray(null_m))


def null_condition(table: PromptTable, batch: Optional[int] = None) -> TextCondition:
    """The null prompt as a TextCondition of batch 1 (or `batch`, broadcast)."""
    e, m = table.null_embeddings, table.null_mask
    if batch is not None:
        e, m = jnp.broadcast_to(e, (batch,) + e.shape[1:]), jnp.broadcast_to(m, (batch,) + m.shape[1:])
    return TextCondition(e, m)


def take_prompts(table: PromptTable, rows: jax.Array) -> TextCondition:
    """TextCondition of the table rows `rows` [B]."""
    return TextCondition(table.embeddings[rows], table.mask[rows])


def sample_prompts(table: PromptTable, key: jax.Array, batch: int, drop_prob: float = 0.0):
    """(TextCondition [batch], labels [batch] int32, rows [batch]) of prompts drawn uniformly with replacement.

    With drop_prob > 0 each example's prompt is replaced by the null prompt with that probability (the
    condition dropout that trains a classifier-free-guidance model, Ho & Salimans 2022); its label stays.
    Pure: the draws come from `key` only ("rows" and "drop" are folded-in streams).
    """
    rows = jax.random.randint(jax.random.fold_in(key, 0), (batch,), 0, table.embeddings.shape[0])
    cond = take_prompts(table, rows)
    if drop_prob > 0:
        drop = jax.random.bernoulli(jax.random.fold_in(key, 1), drop_prob, (batch,))
        null = null_condition(table, batch)
        cond = TextCondition(jnp.where(drop[:, None, None], null.embeddings, cond.embeddings),
                             jnp.where(drop[:, None], null.mask, cond.mask))
    return cond, table.label[rows], rows
