"""The one error type of `di_jax.export`."""


class ExportError(ValueError):
    """A generator that cannot be exported, or a bad output path (one-line message naming what is wrong)."""
