"""What a teacher is to the rest of the library: something that gives D(x; sigma, labels)."""

from typing import Any, Callable, NamedTuple, Optional, Tuple


class Teacher(NamedTuple):
    """A teacher: a denoiser with its parameters and the shape of the data it denoises.

    Attributes:
      params: the first argument of `denoise` (a network's parameter tree; for an analytic teacher
        the distribution itself, e.g. a `GaussianMixture` pytree).
      denoise: (params, x [B, *data_shape], sigma [B], labels [B, label_dim] | None, rng | None,
        augment_labels [B, augment_dim] | None = None) -> D; dropout on exactly when rng is given.
      data_shape: per-example shape of x.
      label_dim: 0 for unconditional teachers, else the number of classes (one-hot labels).
      module: the Flax module of a network teacher (for samplers and reports); None otherwise.
      augment_dim: the length of the augment labels its network takes (EDM: 9 for teachers trained
        with augmentation); 0 if none.
      condition: for teachers conditioned on an input the step receives rather than draws (text
        embeddings): one example's conditioning as a pytree of `jax.ShapeDtypeStruct` (e.g.
        TextCondition([L, C], [L])); `denoise` then takes the batch of it as `labels`. None: class
        labels (label_dim) or none.
    """
    params: Any
    denoise: Callable
    data_shape: Tuple[int, ...]
    label_dim: int = 0
    module: Optional[Any] = None
    augment_dim: int = 0
    condition: Optional[Any] = None
