"""A tiny random-initialised T5 encoder and a word-level tokenizer, built offline (tests and the digits demo).

It stands in for T5-v1.1-XXL (PixArt-α's frozen text encoder) where no download is possible: the same
transformers classes (`T5Config`, `T5EncoderModel`, gated-GELU feed-forward as in v1.1) at toy size,
with random weights from `torch.manual_seed(seed)`, and a `tokenizers` WordLevel vocabulary of the
words of the given texts with T5's special-token ids (<pad> 0, </s> 1, <unk> 2; </s> appended to every
text). `save_pretrained` writes a folder that `di-jax embed-prompts --encoder` reads like a real one.
"""

import os
import re
from typing import Iterable

TINY_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
_WORD = re.compile(r"\w+|[^\w\s]")     # what the tokenizer's Whitespace pre-tokenizer splits into


def vocabulary(texts: Iterable[str]) -> dict:
    """word -> id: T5's special ids first, then the lower-cased words of `texts`, sorted."""
    words = sorted({w for t in texts for w in _WORD.findall(t.lower())})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    return vocab


def build_tiny_t5(folder: str | os.PathLike, texts: Iterable[str], seed: int = 0, **config) -> str:
    """Writes a random T5 encoder (TINY_T5 sizes, overridable by `config`) and its tokenizer to `folder`."""
    from di_jax.text.encoder import _import_torch_transformers

    torch, transformers = _import_torch_transformers()
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder = os.fspath(folder)
    vocab = vocabulary(texts)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    cfg = transformers.T5Config(vocab_size=len(vocab), feed_forward_proj="gated-gelu", pad_token_id=0,
                                eos_token_id=1, decoder_start_token_id=0, **{**TINY_T5, **config})
    transformers.utils.logging.disable_progress_bar()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.T5EncoderModel(cfg).eval()
    os.makedirs(folder, exist_ok=True)
    fast.save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
