"""T5 prompt encoding as PixArt-α does it, into a prompt-embedding directory (PyTorch + transformers, optional).

diffusers' `PixArtAlphaPipeline.encode_prompt`: the prompt lower-cased and stripped (its default
clean_caption=True additionally needs bs4/ftfy and is not reproduced), tokenized with
padding="max_length", max_length=120, truncation, special tokens (T5 appends </s>); the encoder's
last hidden state [B, 120, 4096] and the tokenizer's attention mask are the transformer's text input.
The unconditional input of classifier-free guidance is the empty prompt "" encoded the same way.

torch and transformers are imported only when a prompt is encoded (`pip install 'di_jax[t2i]'`).
"""

import json
import os
import time
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from di_jax.text.embeddings import EmbeddingWriter

PIXART_MAX_LENGTH = 120
ENCODER_DTYPES = ("float32", "bfloat16", "float16")


class EncoderError(ValueError):
    """The encoder folder, its dependencies or the prompts file cannot be used (one line)."""


def _import_torch_transformers():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise EncoderError(f"encoding prompts needs PyTorch and transformers ({e.name or 'a module'} is missing): "
                           "pip install 'di_jax[t2i]'") from None
    return torch, transformers


def _is_t5_folder(folder: str) -> bool:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            cfg = json.loads(f.read(1 << 20).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") in ("t5", "umt5")


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, n)) for n in ("tokenizer.json", "spiece.model",
                                                                 "tokenizer_config.json"))


def resolve_encoder(path: str, tokenizer: Optional[str] = None) -> Tuple[str, str]:
    """(model folder, tokenizer folder) of `path`: a diffusers pipeline folder (text_encoder/ + tokenizer/,
    as PixArt-XL-2-512x512 ships) or a T5 model folder that also holds its tokenizer."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise EncoderError(f"--encoder {path}: not a directory (a T5 model folder or a diffusers pipeline folder)")
    model = os.path.join(path, "text_encoder") if _is_t5_folder(os.path.join(path, "text_encoder")) else path
    if not _is_t5_folder(model):
        raise EncoderError(f"--encoder {path}: no T5 config.json (model_type 't5') in it or in its text_encoder/")
    tok = tokenizer or (os.path.join(path, "tokenizer") if _has_tokenizer(os.path.join(path, "tokenizer")) else model)
    if not _has_tokenizer(tok):
        raise EncoderError(f"no tokenizer files (tokenizer.json / spiece.model) in {tok}; pass --tokenizer DIR")
    return model, tok


def load_t5(model_dir: str, tokenizer_dir: str, dtype: str = "float32"):
    """(tokenizer, T5EncoderModel in eval mode) from local folders (never downloads)."""
    torch, transformers = _import_torch_transformers()
    if dtype not in ENCODER_DTYPES:
        raise EncoderError(f"encoder dtype must be one of {ENCODER_DTYPES}; got {dtype!r}")
    transformers.utils.logging.disable_progress_bar()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        model = transformers.T5EncoderModel.from_pretrained(model_dir, local_files_only=True,
                                                            dtype=getattr(torch, dtype))
    except (OSError, ValueError, ImportError) as e:
        raise EncoderError(f"cannot load the T5 encoder from {model_dir} ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:300]})") from None
    return tok, model.eval()


def preprocess(prompt: str) -> str:
    """diffusers PixArt `_text_preprocessing` with clean_caption=False: lower-case and strip."""
    return prompt.lower().strip()


def encode(tokenizer, model, prompts, max_length: int = PIXART_MAX_LENGTH) -> Tuple[np.ndarray, np.ndarray]:
    """(embeddings [n, max_length, d_model] float32, mask [n, max_length] uint8) of a list of prompts."""
    torch, _ = _import_torch_transformers()
    tokens = tokenizer([preprocess(p) for p in prompts], padding="max_length", max_length=max_length,
                       truncation=True, add_special_tokens=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    return out.float().numpy(), tokens.attention_mask.numpy().astype(np.uint8)


def read_prompts(path: str, labels: bool = False) -> Iterator[Tuple[str, Optional[int]]]:
    """(prompt, label) per non-blank line of a UTF-8 file; with `labels` each line is `LABEL<TAB>PROMPT`."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise EncoderError(f"--prompts {path}: {e.strerror}") from None
    with f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not labels:
                yield line, None
                continue
            head, tab, prompt = line.partition("\t")
            try:
                label = int(head)
            except ValueError:
                label = None
            if not tab or label is None or not prompt.strip():
                raise EncoderError(f"{path}:{number}: with --labels every line must be LABEL<TAB>PROMPT")
            yield prompt, label


def embed_prompts(prompts_file: str, encoder: str, out_dir: str, max_length: int = PIXART_MAX_LENGTH,
                  batch_size: int = 32, shard_size: int = 1024, dtype: str = "float16",
                  encoder_dtype: str = "float32", labels: bool = False, tokenizer: Optional[str] = None,
                  log: Callable[[str], None] = print) -> dict:
    """Encodes every prompt of `prompts_file` and the empty prompt into the prompt directory `out_dir`.

    Progress goes to `log` about every 10 seconds and at the end; returns the written index.
    """
    if max_length < 1 or batch_size < 1:
        raise EncoderError(f"max_length and batch_size must be >= 1; got {max_length}, {batch_size}")
    total = sum(1 for _ in read_prompts(prompts_file, labels))      # a first pass checks every line
    if not total:
        raise EncoderError(f"--prompts {prompts_file} holds no prompts")
    model_dir, tok_dir = resolve_encoder(encoder, tokenizer)
    tok, model = load_t5(model_dir, tok_dir, encoder_dtype)
    writer = EmbeddingWriter(out_dir, dtype, shard_size, labels)
    t0 = last = time.perf_counter()
    done, batch = 0, []

    def flush():
        nonlocal done, last, batch
        emb, mask = encode(tok, model, [p for p, _ in batch], max_length)
        writer.add(emb, mask, [p for p, _ in batch], [lab for _, lab in batch] if labels else None)
        done += len(batch)
        batch = []
        now = time.perf_counter()
        if now - last >= 10 or done == total:
            log(f"embedded {done}/{total} prompts ({done / max(now - t0, 1e-9):.1f} prompts/s)")
            last = now

    for item in read_prompts(prompts_file, labels):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    null = encode(tok, model, [""], max_length)
    meta = dict(encoder=os.path.abspath(model_dir), tokenizer=os.path.abspath(tok_dir),
                d_model=int(model.config.d_model), encoder_dtype=encoder_dtype,
                preprocess="lower().strip() (diffusers PixArt, clean_caption=False)",
                padding="max_length", seconds=round(time.perf_counter() - t0, 2))
    return writer.finish(null, meta)
