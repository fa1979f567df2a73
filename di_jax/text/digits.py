"""The prompts of the embedded text-to-image digits demo, and where their embeddings ship.

Six templates per digit train the teacher ("a handwritten seven", "the digit 7", ...); two more,
built from the same words in new combinations, are held out to see whether the teacher follows
prompts it was not trained on. The embeddings come from a tiny random T5 (`tiny_t5`, seed
`ENCODER_SEED`) through `di-jax embed-prompts`; `experiments/train_digits_t2i_teacher.py` rebuilds them.
"""

import os
from typing import List, Tuple

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = ("a handwritten {word}", "the digit {n}", "number {word}", "the number {word}",
                   "handwritten digit {n}", "{word}")
HELDOUT_TEMPLATES = ("a handwritten digit {n}", "the digit {word}")
ENCODER_SEED = 0
MAX_LENGTH = 8          # the longest prompt is 4 words + </s>: 8 tokens leave padding to learn from

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")
PROMPTS = os.path.join(ASSETS, "digits_prompts")
TRAIN_PROMPTS, HELDOUT_PROMPTS = os.path.join(PROMPTS, "train"), os.path.join(PROMPTS, "heldout")
TEACHER = os.path.join(ASSETS, "digits_t2i_teacher")


def prompts(templates=TRAIN_TEMPLATES) -> List[Tuple[int, str]]:
    """(label, prompt) for every template and digit, template-major."""
    return [(d, t.format(word=WORDS[d], n=d)) for t in templates for d in range(10)]


def write_prompts_file(path: str, templates=TRAIN_TEMPLATES) -> str:
    """The `LABEL<TAB>PROMPT` file `di-jax embed-prompts --labels` reads."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{label}\t{text}\n" for label, text in prompts(templates))
    return path
