"""Text conditioning for text-to-image teachers (PixArt-α): precomputed T5 prompt embeddings.

  embeddings  the on-disk format (npz shards + index.json + null.npz), its writer, and `PromptEmbeddings`,
              a reader of per-host batches whose order is a pure function of (seed, step).
  table       a small prompt set on the devices, sampled inside a jitted step (condition dropout included).
  encoder     T5 encoding as diffusers' PixArt pipeline does it (PyTorch + transformers, optional extra t2i).
  cli         `di-jax embed-prompts`.
  tiny_t5     a tiny random T5 + word tokenizer built offline (tests, the digits demo).
  digits      the digits demo's prompts and asset paths.

Only `embeddings` is imported here: torch / transformers load only when prompts are encoded.
"""

from di_jax.text.embeddings import (
    EmbeddingWriter,
    PromptBatch,
    PromptDataError,
    PromptEmbeddings,
    host_positions,
    permute,
    stream_indices,
    write_prompt_embeddings,
)

__all__ = ["EmbeddingWriter", "PromptBatch", "PromptDataError", "PromptEmbeddings", "host_positions", "permute",
           "stream_indices", "write_prompt_embeddings"]
