"""Exact metrics of the toy testbeds (di_jax.eval.mixture) and the listed-mode mixture teacher."""

import jax
import numpy as np
import pytest

from di_jax.configs import toy_mixture
from di_jax.eval import mixture as mx
from di_jax.teachers import build_teacher, mixtures


def _teacher():
    return build_teacher(toy_mixture.get_config()).params


def _at_means(mixture, counts):
    """Points exactly at the modes' centres, counts[k] of them at mode k."""
    return np.repeat(np.asarray(mixture.means), counts, axis=0)


def test_listed_mixture_follows_the_config():
    m = _teacher()
    np.testing.assert_allclose(m.means, toy_mixture.MEANS)
    np.testing.assert_allclose(m.stds, toy_mixture.STDS)
    np.testing.assert_allclose(m.weights, np.asarray(toy_mixture.WEIGHTS) / sum(toy_mixture.WEIGHTS), rtol=1e-6)


def test_recall_and_weight_error_on_exact_shares():
    m = _teacher()                                     # weights .30 .20 .15 .15 .12 .08
    exact = _at_means(m, [30, 20, 15, 15, 12, 8])
    assert mx.mode_recall(m, exact) == 1.0 and mx.weight_error(m, exact) == pytest.approx(0.0, abs=1e-7)
    assert mx.near_mode_fraction(m, exact) == 1.0
    off = _at_means(m, [30, 20, 15, 15, 16, 4])        # mode 4 +33 %, mode 5 -50 %: both outside 25 %
    assert mx.mode_recall(m, off) == pytest.approx(4 / 6)
    assert mx.weight_error(m, off) == pytest.approx(0.04, abs=1e-7)
    edge = _at_means(m, [28, 20, 15, 15, 12, 10])      # mode 5 at +25 %: still recalled; mode 0 -6.7 %
    assert mx.mode_recall(m, edge) == 1.0
    missing = _at_means(m, [30, 20, 15, 15, 12, 0])    # coverage and recall both see a lost mode
    assert mx.mode_recall(m, missing) == pytest.approx(5 / 6) and mx.mode_coverage(m, missing) == pytest.approx(5 / 6)
    assert mx.weight_error(m, missing) == pytest.approx(0.08, abs=1e-6)


def test_teacher_samples_score_like_the_theory():
    m = _teacher()
    x = np.asarray(m.sample(jax.random.PRNGKey(0), 40000))
    assert mx.mode_recall(m, x) == 1.0
    assert mx.weight_error(m, x) < 0.01
    assert mx.near_mode_fraction(m, x, 3.0) == pytest.approx(1 - np.exp(-4.5), abs=0.003)   # 2-D: P(|z| <= 3)
    metrics = mx.mixture_metrics(m, x, jax.random.PRNGKey(1), 2000)
    assert metrics["precision"] > 0.97 and metrics["mode_recall"] == 1.0 and metrics["energy_distance"] < 0.01


def test_precision_uses_each_modes_own_width():
    m = _teacher()
    # 0.5 from the widest mode's centre (1.7 of its std 0.3) is near; 0.2 from the narrowest (6.7 std) is not
    x = np.asarray([[0.5, 0.0], [2.2, -2.0]], np.float32)
    assert mx.near_mode_fraction(m, x, 3.0) == 0.5


@pytest.mark.parametrize("field,value,match", [
    ("means", [[0.0, 0.0], [1.0]], "config.teacher.means"),
    ("means", [0.0, 1.0], r"config.teacher.means must be a \[K\]\[D\]"),
    ("stds", [0.1, 0.1], "config.teacher.stds must list one value per mode"),
    ("weights", [0.5, 0.5, -0.1], "config.teacher.weights must be finite and > 0"),
    ("stds", [0.1, float("nan"), 0.1], "config.teacher.stds must be finite and > 0"),
])
def test_listed_mixture_bad_fields_are_one_line_errors(field, value, match):
    fields = dict(means=[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], stds=[0.1, 0.1, 0.1], weights=[0.2, 0.3, 0.5])
    fields[field] = value
    with pytest.raises(ValueError, match=match) as e:
        mixtures.listed_mixture(**fields)
    assert "\n" not in str(e.value)


def test_mixture_kind_needs_its_lists():
    c = toy_mixture.get_config()
    del c.teacher["weights"]
    with pytest.raises(ValueError, match="needs config.teacher.weights"):
        build_teacher(c)
