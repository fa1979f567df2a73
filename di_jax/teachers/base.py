"""What a teacher is to the rest of the library: something that gives D(x; sigma, labels)."""

from typing import Any, Callable, NamedTuple, Optional, Tuple


class Teacher(NamedTuple):
    """A teacher: a denoiser with its parameters and the shape of the data it denoises.

    Attributes:
      params: the first argument of `denoise` (a network's parameter tree; for an analytic teacher
        the distribution itself, e.g. a `GaussianMixture` pytree).
      denoise: (params, x [B, *data_shape], sigma [B], labels [B, label_dim] | None, rng | None) -> D.
      data_shape: per-example shape of x.
      label_dim: 0 for unconditional teachers, else the number of classes (one-hot labels).
      module: the Flax module of a network teacher (for samplers and reports); None otherwise.
    """
    params: Any
    denoise: Callable
    data_shape: Tuple[int, ...]
    label_dim: int = 0
    module: Optional[Any] = None
