"""`di-jax embed-prompts --prompts FILE.txt --encoder PATH --out DIR`: T5 embeddings of prompts, precomputed.

Writes a prompt-embedding directory (`di_jax.text.embeddings`: npz shards, null.npz, index.json) from a
text file with one prompt per line (`--labels`: `LABEL<TAB>PROMPT`), encoding as diffusers' PixArt-α
pipeline does (`di_jax.text.encoder`). PATH is a local T5 folder with its tokenizer, or a diffusers
pipeline folder with text_encoder/ and tokenizer/. Needs PyTorch and transformers (`pip install
'di_jax[t2i]'`). Every failure prints one line `di-jax embed-prompts: error: ...` and returns 2.
"""

import sys

from di_jax.command import OneLineParser, run_command

_USAGE = ("di-jax embed-prompts --prompts FILE.txt --encoder PATH --out DIR [--max-length 120] [--labels] "
          "[--batch-size 32] [--shard-size 1024] [--dtype float16] [--encoder-dtype float32] [--tokenizer DIR] "
          "[--verbose]")


def _parser(prog: str) -> OneLineParser:
    p = OneLineParser(prog=prog, usage=_USAGE, description=__doc__.splitlines()[0])
    p.add_argument("--prompts", required=True, help="UTF-8 text file, one prompt per line (blank lines skipped)")
    p.add_argument("--encoder", required=True, help="T5 model folder (with its tokenizer) or diffusers pipeline "
                                                    "folder (text_encoder/, tokenizer/)")
    p.add_argument("--out", required=True, help="new directory for the shards and index.json")
    p.add_argument("--max-length", type=int, default=120, help="tokens per prompt, padded / truncated (PixArt: 120)")
    p.add_argument("--labels", action="store_true", help="lines are LABEL<TAB>PROMPT (integer labels, for demos)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per encoder call")
    p.add_argument("--shard-size", type=int, default=1024, help="prompts per shard file")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored embedding dtype")
    p.add_argument("--encoder-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype the T5 encoder runs in")
    p.add_argument("--tokenizer", help="tokenizer folder, if not beside the model")
    p.add_argument("--verbose", action="store_true", help="print the full traceback of an error")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "di-jax embed-prompts"

    def body(opts) -> str:
        from di_jax.text.encoder import embed_prompts

        index = embed_prompts(opts.prompts, opts.encoder, opts.out, opts.max_length, opts.batch_size,
                              opts.shard_size, opts.dtype, opts.encoder_dtype, opts.labels, opts.tokenizer,
                              log=lambda line: print(line, flush=True))
        return (f"{prog}: {index['count']} prompts -> {opts.out} ({len(index['shards'])} shard(s), "
                f"[{index['max_length']}, {index['width']}] {index['dtype']} each, null prompt included, "
                f"{index['encoder']['seconds']} s)")

    def library_errors() -> tuple:
        from di_jax.text.embeddings import PromptDataError
        from di_jax.text.encoder import EncoderError
        return (PromptDataError, EncoderError)

    return run_command(prog, _parser(prog), argv[1:], body, messages=library_errors)


if __name__ == "__main__":
    sys.exit(main())
