"""Hostile configs, weights, API arguments and command lines: one-line errors in bounded time and memory.

Issue 18. Classes (inputs built here, several variants each; `test_hostile_input_counts` counts them):
  A  network config values, one typed validator for every source: command-line / API overrides,
     pickled `_init_kwargs`, safetensors metadata, a converted directory's config.json
  B  non-finite and absurd weights (NaN, +-inf, |x| > 1e19): refused by default with a count,
     accepted with allow_nonfinite / --allow-nonfinite
  C  wrong-typed API arguments (load_teacher(None), a list as config, ...)
  D  `di-jax convert`: every exception kind is one line with exit code 2 (130 for Ctrl-C),
     --sha256, --config files that are not small regular files
  E  StyleGAN2-ADA snapshots: named as such, with the reader that reads them
  F  `di-jax distill`: bad flags, overrides and teachers fail in one line (exit 2) before compiling,
     without creating the workdir
Every error must be one line, take < 5 s and < 256 MiB above the baseline (tracemalloc peak and the
process's peak RSS; for subprocesses: wall time and peak RSS above a bare `import di_jax.main`).
"""

import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from di_jax.convert import (
    CheckpointError,
    catalogue,
    cli,
    convert_checkpoint,
    load_converted,
    load_teacher,
    read_checkpoint,
    save_safetensors,
)
from di_jax.convert import config as config_lib
from di_jax.nets import edm_config_presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(REPO, "tests", "data", "edm_golden")
GOLDEN_CASES = ["ddpmpp_uncond_vp", "ddpmpp_cond_edm", "adm_cond_edm", "adm_multihead_iddpm"]
STYLEGAN_PKL = "/work/shared/golden/stylegan2/stylegan2_cond_skip.pkl"
MiB = 1 << 20
TIME_LIMIT_S, MEMORY_LIMIT = 5.0, 256 * MiB


def jax_leaves(tree):
    import jax
    return jax.tree_util.tree_leaves(tree)


def golden(name="ddpmpp_cond_edm"):
    d = np.load(os.path.join(GOLDEN_DIR, f"{name}.npz"))
    sd = {str(k): d[f"param/{k}"] for k in d["state_dict_keys"]}
    return sd, json.loads(str(d["config_json"])), str(d["precond_class"])


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Bounded:
    """Wall time, tracemalloc peak and growth of the peak RSS of the enclosed block."""

    def __enter__(self):
        self.rss0 = _max_rss()
        tracemalloc.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self.rss_growth = _max_rss() - self.rss0
        return False

    def check(self):
        assert self.seconds < TIME_LIMIT_S, f"took {self.seconds:.1f} s"
        assert self.peak < MEMORY_LIMIT, f"allocated {self.peak / MiB:.0f} MiB"
        assert self.rss_growth < MEMORY_LIMIT, f"peak RSS grew {self.rss_growth / MiB:.0f} MiB"


def one_line_error(fn, *args, exc=CheckpointError, match=None, **kwargs) -> str:
    """Call fn; it must raise `exc` with a non-empty one-line message, in bounded time and memory."""
    with _Bounded() as b:
        with pytest.raises(exc) as info:
            fn(*args, **kwargs)
    b.check()
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 2000, message
    if match is not None:
        assert match in message, message
    return message


def run_cli(argv, capsys, rc=2, match=None) -> str:
    """`di-jax convert` in-process: exit code `rc` and (for errors) exactly one stderr line."""
    with _Bounded() as b:
        got = cli.main(["di-jax convert"] + [str(a) for a in argv])
    if rc:  # the bounds are for failures; a successful conversion may take longer on a loaded machine
        b.check()
    err = capsys.readouterr().err
    assert got == rc, err
    if rc:
        assert err.count("\n") == 1 and err.startswith("di-jax convert: error: "), err
        assert "Traceback" not in err
        if match is not None:
            assert match in err, err
    return err


# ---------------------------------------------------------------- A: config values

# (key, bad value): JSON-expressible, so each goes through every channel (API, --config, pickled
# _init_kwargs, safetensors metadata, config.json). The expected message names the key.
BAD_VALUES = [
    ("attn_resolutions", 8), ("attn_resolutions", None), ("attn_resolutions", "2"), ("attn_resolutions", [8.0]),
    ("attn_resolutions", [True]), ("attn_resolutions", [0]),
    ("sigma_data", "abc"), ("sigma_data", 0), ("sigma_data", -0.5), ("sigma_data", float("nan")),
    ("dropout", 7.5), ("dropout", -0.1), ("label_dropout", True), ("dropout", float("inf")),
    ("beta_d", -1), ("beta_d", 0), ("beta_min", float("inf")), ("epsilon_t", 0), ("epsilon_t", 2),
    ("num_blocks", 1e9), ("num_blocks", 10 ** 30), ("num_blocks", 65), ("num_blocks", -1), ("num_blocks", True),
    ("num_blocks", "4"), ("num_blocks", 4.0),
    ("img_resolution", 0), ("img_resolution", 1 << 20), ("img_resolution", 16.0), ("img_channels", -3),
    ("img_channels", False), ("model_channels", 10 ** 6), ("model_channels", 0),
    ("channel_mult", []), ("channel_mult", [0]), ("channel_mult", [1] * 14), ("channel_mult", [1, "2"]),
    ("channel_mult", 2), ("channel_mult", [1, 10 ** 6]), ("channel_mult_emb", 1000), ("channel_mult_noise", 0),
    ("label_dim", -1), ("label_dim", 1.5), ("augment_dim", 10 ** 9),
    ("embedding_type", "fancy"), ("embedding_type", 3), ("encoder_type", "Residual"), ("decoder_type", None),
    ("resample_filter", [1, -1]), ("resample_filter", []), ("resample_filter", "1,1"), ("resample_filter", [1e300]),
    ("use_fp16", 1), ("use_fp16", "true"), ("dtype", "float64"), ("M", 10 ** 9), ("C_1", 2.0), ("C_2", -1),
    ("sigma_min", -1), ("sigma_max", "huge"), ("sigma_max", 0), ("model_type", "UNet"), ("model_type", None),
]
# Each refused for a combination of values that are fine on their own.
BAD_COMBINATIONS = [
    (dict(img_resolution=10), "cannot be halved"),                     # 3 levels need a multiple of 4
    (dict(model_channels=15), "must be even"),                         # odd positional-embedding width
    (dict(sigma_min=5.0, sigma_max=1.0), "must be below sigma_max"),
    (dict(model_channels=4096, channel_mult=[64, 64, 64]), "parameters, more than"),
]
_IDS = [f"{k}={v!r}"[:40] for k, v in BAD_VALUES]


def _base_config():
    return dict(golden()[1], precond="EDMPrecond")


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=_IDS)
def test_bad_value_api(key, value):
    one_line_error(config_lib.complete, {**_base_config(), key: value}, match=repr(key))
    one_line_error(config_lib.check_keys, {key: value}, match=repr(key))


@pytest.mark.parametrize("extra,match", BAD_COMBINATIONS)
def test_bad_combination_api(extra, match):
    one_line_error(config_lib.complete, {**_base_config(), **extra}, match=match)


class _Opaque:
    """Would hang or print pages if anything called repr/str/hash on it."""

    def __repr__(self):
        raise AssertionError("repr of an untrusted value")

    __str__ = __repr__

    def __hash__(self):
        raise AssertionError("hash of an untrusted value")


def _deep(depth):
    v = []
    for _ in range(depth):
        v = [v]
    return v


def _laughs(depth=40):
    v = [1]
    for _ in range(depth):
        v = [v, v]           # 2^40 paths through 80 objects
    return v


def _cycle():
    v = [1]
    v.append(v)
    return v


# Structures only an in-memory or pickled config can hold (not JSON): (value or config, fragment).
BAD_STRUCTURES = [
    (lambda: {"channel_mult": _deep(5000)}, "nested more than"),
    (lambda: {"channel_mult": _cycle()}, "nested more than"),
    (lambda: {"channel_mult": _laughs()}, "more than"),
    (lambda: {("img", "resolution"): 8}, "not a string"),
    (lambda: {7: 8}, "not a string"),
    (lambda: {f"k{i}": 1 for i in range(5000)}, "more than 4096 values"),
    (lambda: {"precond": "x" * 10_000_000}, "a string of 10000000 characters"),
    (lambda: {"bad\nkey": 1}, "unknown config keys"),
    (lambda: {"channel_mult": np.zeros(10 ** 6)}, "not a short list"),
    (lambda: {"channel_mult": {1, 2}}, "not a plain value"),
    (lambda: {"precond": b"EDMPrecond"}, "not a plain value"),
    (lambda: {"channel_mult": _Opaque()}, "not a plain value"),
    (lambda: [("precond", "EDMPrecond")], "must be an object"),
    (lambda: "precond=EDMPrecond", "must be an object"),
    (lambda: None, "must be an object"),
]


@pytest.mark.parametrize("i", range(len(BAD_STRUCTURES)))
def test_bad_structure_api(i):
    make, fragment = BAD_STRUCTURES[i]
    one_line_error(config_lib.check_keys, make(), match=fragment)


def test_presets_and_golden_configs_admitted():
    """The bounds admit every official preset, every golden test config and the shipped teachers."""
    from di_jax.bench.networks import TINY
    from di_jax.teachers import digits

    configs = dict(edm_config_presets())
    configs.update({name: dict(golden(name)[1], precond=golden(name)[2]) for name in GOLDEN_CASES})
    configs.update(digits=digits.CONFIG, bench_tiny=TINY)
    for name, cfg in configs.items():
        done = config_lib.complete(cfg, name)
        assert config_lib.complete(done) == done, name        # idempotent: complete() of a completed config
        params, buffers = catalogue.count_parameters(catalogue.expected_shapes(done))
        assert params + buffers < config_lib.LIMITS["parameters"] / 10, name
    assert len(configs) == 9 + 4 + 2


def test_limits_leave_margin_over_the_presets():
    presets = list(edm_config_presets().values())
    lim = config_lib.LIMITS
    assert max(p["img_resolution"] for p in presets) * 16 <= lim["resolution"]
    assert max(p["model_channels"] for p in presets) * 16 <= lim["model_channels"]
    assert max(max(p["channel_mult"]) for p in presets) * 16 <= lim["mult"]
    assert max(len(p["channel_mult"]) for p in presets) * 3 <= lim["levels"]
    assert max(p.get("num_blocks", 4) for p in presets) * 16 <= lim["num_blocks"]
    assert max(p["label_dim"] for p in presets) * 100 <= lim["label_dim"]


# Channels other than the API: the same validator, the same one-line error.
CHANNEL_VALUES = [("attn_resolutions", 8), ("attn_resolutions", None), ("attn_resolutions", "2"),
                  ("sigma_data", "abc"), ("dropout", 7.5), ("beta_d", -1), ("num_blocks", 1e9),
                  ("num_blocks", 10 ** 30), ("use_fp16", 1), ("channel_mult", [1] * 14), ("M", 10 ** 9),
                  ("embedding_type", "fancy")]
_CIDS = [f"{k}={v!r}"[:40] for k, v in CHANNEL_VALUES]


@pytest.fixture(scope="module")
def golden_files(tmp_path_factory):
    """The small golden SongUNet as .safetensors (no metadata), .pkl (if torch) and a converted dir."""
    t = tmp_path_factory.mktemp("golden")
    sd, cfg, pc = golden()
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(t / "plain.safetensors"))
    convert_checkpoint(t / "plain.safetensors", t / "conv", {"precond": pc})
    return t, sd, cfg, pc


@pytest.mark.parametrize("key,value", CHANNEL_VALUES, ids=_CIDS)
def test_bad_value_as_cli_override(key, value, golden_files, capsys, tmp_path):
    t, _, _, pc = golden_files
    override = json.dumps({"precond": pc, key: value})
    run_cli([t / "plain.safetensors", tmp_path / "out", "--config", override], capsys, match=repr(key))
    (tmp_path / "c.json").write_text(override)
    run_cli([t / "plain.safetensors", tmp_path / "out", "--config", tmp_path / "c.json"], capsys, match=repr(key))
    assert not (tmp_path / "out").exists()
    one_line_error(read_checkpoint, t / "plain.safetensors", {"precond": pc, key: value}, match=repr(key))


@pytest.mark.parametrize("key,value", CHANNEL_VALUES, ids=_CIDS)
def test_bad_value_in_safetensors_metadata(key, value, golden_files, tmp_path):
    from safetensors.numpy import save_file

    t, sd, cfg, pc = golden_files
    meta = json.dumps({**cfg, "precond": pc, key: value})
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "m.safetensors"),
              metadata={"edm_config": meta})
    one_line_error(read_checkpoint, tmp_path / "m.safetensors", match=repr(key))
    one_line_error(load_teacher, tmp_path / "m.safetensors", match=repr(key))


@pytest.mark.parametrize("key,value", CHANNEL_VALUES, ids=_CIDS)
def test_bad_value_in_converted_config_json(key, value, golden_files, tmp_path):
    t = golden_files[0]
    shutil.copytree(t / "conv", tmp_path / "conv")
    cfg = json.loads((tmp_path / "conv" / "config.json").read_text())
    (tmp_path / "conv" / "config.json").write_text(json.dumps({**cfg, key: value}))
    one_line_error(load_converted, tmp_path / "conv", match=repr(key))
    one_line_error(load_teacher, tmp_path / "conv", match=repr(key))


@pytest.mark.parametrize("key,value", CHANNEL_VALUES, ids=_CIDS)
def test_bad_value_in_pickled_init_kwargs(key, value, tmp_path):
    pytest.importorskip("torch")
    from convert_writers import edm_pickle_bytes

    sd, cfg, pc = golden()
    (tmp_path / "n.pkl").write_bytes(edm_pickle_bytes(sd, pc, {**cfg, key: value}, ""))
    msg = one_line_error(read_checkpoint, tmp_path / "n.pkl", match=repr(key))
    assert "_init_kwargs" in msg


_MARK = "DEEP_LIST_MARKER"


@pytest.mark.parametrize("make", [lambda: _MARK, _cycle, _laughs, lambda: {"a": _laughs(30)}],
                         ids=["deep2000", "cycle", "laughs40", "dict_laughs30"])
def test_hostile_structure_in_pickled_init_kwargs(make, tmp_path):
    """A 2000-deep, self-containing or memo-shared value in `_init_kwargs`: refused after a bounded walk."""
    pytest.importorskip("torch")
    from convert_writers import edm_pickle_bytes

    sd, cfg, pc = golden()
    data = edm_pickle_bytes(sd, pc, {**cfg, "channel_mult": make()}, "")
    marker = b"\x8c" + bytes([len(_MARK)]) + _MARK.encode()
    if marker in data:  # pickle.dumps itself cannot nest 2000 deep: splice EMPTY_LIST x 2000, APPEND x 1999
        data = data.replace(marker, b"]" * 2000 + b"a" * 1999)
    (tmp_path / "n.pkl").write_bytes(data)
    one_line_error(read_checkpoint, tmp_path / "n.pkl")


def test_hostile_key_digits_in_state_dict(tmp_path):
    """Level names with thousands of digits never reach int(): a one-line error, not ValueError noise."""
    from safetensors.numpy import save_file

    sd, _, pc = golden()
    for i, key in enumerate(["model.enc." + "9" * 5000 + "x" + "9" * 5000 + "_conv.weight",
                             "model.dec.16x16_block" + "1" * 5000 + ".conv0.weight"]):
        save_file({**{k: np.ascontiguousarray(v) for k, v in sd.items()}, key: np.zeros(1, np.float32)},
                  str(tmp_path / f"{i}.safetensors"))
        one_line_error(read_checkpoint, tmp_path / f"{i}.safetensors", {"precond": pc})


# ---------------------------------------------------------------- B: non-finite and absurd weights

NONFINITE = [("nan1", [np.nan], "1 NaN"), ("posinf", [np.inf], "1 infinite"), ("neginf", [-np.inf], "1 infinite"),
             ("3e38", [3e38], "with |x| > 1e19"), ("1e20", [-1e20], "with |x| > 1e19"),
             ("mixed", [np.nan, np.inf, 5e30], "3 unusable"), ("all_nan", None, "NaN")]
_KEY = "model.enc.8x8_block0.conv1.weight"


def _poisoned(values):
    sd, cfg, pc = golden()
    sd = {k: np.array(v) for k, v in sd.items()}
    flat = sd[_KEY].reshape(-1)
    if values is None:
        flat[:] = np.nan
    else:
        flat[:len(values)] = values
    return sd, cfg, pc


def _write(fmt, path, sd, cfg, pc):
    if fmt == "safetensors":
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path),
                  metadata={"edm_config": json.dumps({**cfg, "precond": pc})})
    elif fmt == "pt":
        torch = pytest.importorskip("torch")
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
    else:
        pytest.importorskip("torch")
        from convert_writers import edm_pickle_bytes
        path.write_bytes(edm_pickle_bytes(sd, pc, cfg, ""))
    return path


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pkl"])
@pytest.mark.parametrize("name,values,fragment", NONFINITE, ids=[n for n, _, _ in NONFINITE])
def test_nonfinite_weights_refused_by_default(fmt, name, values, fragment, tmp_path):
    sd, cfg, pc = _poisoned(values)
    path = _write(fmt, tmp_path / f"w.{fmt}", sd, cfg, pc)
    msg = one_line_error(read_checkpoint, path, {"precond": pc}, match=fragment)
    assert "allow_nonfinite" in msg and _KEY in msg and "in 1 tensor" in msg
    one_line_error(load_teacher, path, {"precond": pc}, match=fragment)
    got, _ = read_checkpoint(path, {"precond": pc}, allow_nonfinite=True)
    np.testing.assert_array_equal(got[_KEY], sd[_KEY])


def test_large_but_finite_weights_accepted(tmp_path):
    sd, cfg, pc = _poisoned([1e18, -1e18, 65504.0])
    got, _ = read_checkpoint(_write("safetensors", tmp_path / "w.safetensors", sd, cfg, pc))
    assert got[_KEY].reshape(-1)[0] == np.float32(1e18)


@pytest.mark.parametrize("name,values,fragment", NONFINITE[:4], ids=[n for n, _, _ in NONFINITE[:4]])
def test_nonfinite_cli_flag(name, values, fragment, tmp_path, capsys):
    sd, cfg, pc = _poisoned(values)
    path = _write("safetensors", tmp_path / "w.safetensors", sd, cfg, pc)
    err = run_cli([path, tmp_path / "out"], capsys, match=fragment)
    assert "--allow-nonfinite" in err and not (tmp_path / "out").exists()
    run_cli([path, tmp_path / "out", "--allow-nonfinite"], capsys, rc=0)
    one_line_error(load_converted, tmp_path / "out", match=fragment)       # refused again when loaded
    one_line_error(load_teacher, tmp_path / "out", match=fragment)
    _, params = load_converted(tmp_path / "out", allow_nonfinite=True)
    assert catalogue.value_problems({"p": np.concatenate([np.ravel(v) for v in jax_leaves(params)])})[:3] != (0, 0, 0)


def test_save_safetensors_refuses_nonfinite_params(tmp_path):
    from di_jax.convert.edm_mapping import state_dict_to_flax

    sd, cfg, pc = golden()
    params = state_dict_to_flax(sd, {**cfg, "precond": pc})
    leaf = params["model"]["map_layer0"]["kernel"]
    params["model"]["map_layer0"]["kernel"] = np.where(np.arange(leaf.size).reshape(leaf.shape) < 2, np.nan, leaf)
    one_line_error(save_safetensors, tmp_path / "x.safetensors", params, {**cfg, "precond": pc},
                   match="2 NaN")
    assert not (tmp_path / "x.safetensors").exists()
    save_safetensors(tmp_path / "x.safetensors", params, {**cfg, "precond": pc}, allow_nonfinite=True)


# ---------------------------------------------------------------- C: wrong-typed API arguments

WRONG_ARGS = [
    (load_teacher, (None,), {}, TypeError, "'path' must be"),
    (load_teacher, (123,), {}, TypeError, "'path' must be"),
    (load_teacher, ([b"x"],), {}, TypeError, "'path' must be"),
    (load_teacher, ("",), {}, CheckpointError, "not a usable path"),
    (load_teacher, ("a\0b",), {}, CheckpointError, "not a usable path"),
    (load_teacher, ("GOLDEN",), {"config": [("precond", "EDMPrecond")]}, TypeError, "'config' must be"),
    (load_teacher, ("GOLDEN",), {"config": '{"precond": "EDMPrecond"}'}, TypeError, "'config' must be"),
    (load_teacher, ("GOLDEN",), {"use_torch": "yes"}, TypeError, "'use_torch' must be"),
    (load_teacher, ("GOLDEN",), {"allow_nonfinite": "no"}, TypeError, "'allow_nonfinite' must be"),
    (read_checkpoint, (None,), {}, TypeError, "'path' must be"),
    (read_checkpoint, ("GOLDEN", [1, 2]), {}, TypeError, "'config' must be"),
    (read_checkpoint, ("GOLDEN",), {"allow_nonfinite": 1}, TypeError, "'allow_nonfinite' must be"),
    (convert_checkpoint, ("GOLDEN", None), {}, TypeError, "'out_dir' must be"),
    (convert_checkpoint, (None, "OUT"), {}, TypeError, "'in_path' must be"),
    (convert_checkpoint, ("GOLDEN", "OUT", ["precond"]), {}, TypeError, "'config' must be"),
    (load_converted, (3.5,), {}, TypeError, "'out_dir' must be"),
    (save_safetensors, ("OUT2", [], {}), {}, TypeError, "'params' must be"),
    (save_safetensors, ("OUT2", {}, None), {}, TypeError, "'config' must be"),
    (config_lib.load_json, (None,), {}, TypeError, "config must be"),
    (config_lib.load_json, ("[1, 2]",), {}, CheckpointError, "cannot read config file"),
]


@pytest.mark.parametrize("i", range(len(WRONG_ARGS)))
def test_wrong_typed_api_arguments(i, golden_files, tmp_path):
    fn, args, kwargs, exc, fragment = WRONG_ARGS[i]
    subst = {"GOLDEN": str(golden_files[0] / "plain.safetensors"), "OUT": str(tmp_path / "out"),
             "OUT2": str(tmp_path / "x.safetensors")}
    args = tuple(subst.get(a, a) if isinstance(a, str) else a for a in args)
    one_line_error(fn, *args, exc=exc, match=fragment, **kwargs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.safetensors").exists()


def test_converted_output_path_is_a_file(golden_files, tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(convert_checkpoint, golden_files[0] / "plain.safetensors", tmp_path / "f",
                   {"precond": "EDMPrecond"}, match="is not a directory")


# ---------------------------------------------------------------- D: di-jax convert command line

class _Untrusted(Exception):
    def __str__(self):
        raise AssertionError("str of an untrusted exception argument")


RAISED = [(ValueError("bad\nvalue"), 2, "ValueError: bad value"), (TypeError("wrong"), 2, "TypeError: wrong"),
          (MemoryError(), 2, "out of memory"), (RecursionError("maximum recursion depth"), 2, "nested too deeply"),
          (KeyboardInterrupt(), 130, "interrupted"), (RuntimeError("x" * 5000), 2, "RuntimeError: xxx"),
          (_Untrusted(object()), 2, "_Untrusted"), (OSError(28, "No space left on device"), 2, "No space left"),
          (AssertionError(), 2, "AssertionError"), (CheckpointError("multi\nline"), 2, "multi line")]


@pytest.mark.parametrize("i", range(len(RAISED)))
def test_cli_every_exception_is_one_line(i, monkeypatch, capsys, golden_files, tmp_path):
    error, rc, fragment = RAISED[i]
    import di_jax.convert

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(di_jax.convert, "convert_checkpoint", boom)
    argv = [golden_files[0] / "plain.safetensors", tmp_path / "out"]
    err = run_cli(argv, capsys, rc=rc, match=fragment)
    assert len(err) < 1200
    if not isinstance(error, _Untrusted):
        cli.main(["di-jax convert", *map(str, argv), "--verbose"])
        verbose = capsys.readouterr().err
        assert "Traceback" in verbose and verbose.splitlines()[-1] == err.strip()


def test_cli_sha256(golden_files, capsys, tmp_path):
    import hashlib

    src = golden_files[0] / "plain.safetensors"
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    run_cli([src, tmp_path / "a", "--config", '{"precond": "EDMPrecond"}', "--sha256", good.upper()], capsys, rc=0)
    bad = ("0" if good[0] != "0" else "1") + good[1:]
    run_cli([src, tmp_path / "b", "--sha256", bad], capsys, match="SHA-256 mismatch")
    for malformed in (good[:-1], good + "0", "z" * 64, ""):
        run_cli([src, tmp_path / "b", "--sha256", malformed], capsys, match="64 hexadecimal digits")
    os.mkfifo(tmp_path / "fifo")
    run_cli([tmp_path / "fifo", tmp_path / "b", "--sha256", good], capsys, match="named pipe")
    run_cli(["/dev/zero", tmp_path / "b", "--sha256", good], capsys, match="character device")
    assert not (tmp_path / "b").exists()


def _config_files(t):
    os.mkfifo(t / "fifo.json")
    with open(t / "huge.json", "wb") as f:
        f.truncate(2 * MiB)                                    # sparse: no disk used
    (t / "dir.json").mkdir()
    os.symlink("/dev/zero", t / "zero.json")
    (t / "latin1.json").write_bytes(b'{"precond": "EDMPr\xe9cond"}')
    (t / "array.json").write_text('["precond", "EDMPrecond"]')
    (t / "deep.json").write_text('{"precond": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (t / "bigint.json").write_text('{"num_blocks": ' + "9" * 100_000 + "}")
    (t / "nan.json").write_text('{"precond": "EDMPrecond", "sigma_data": NaN}')
    return [("/dev/zero", "character device"), (t / "fifo.json", "named pipe"), (t / "huge.json", "bytes"),
            (t / "dir.json", "directory"), (t / "zero.json", "character device"), (t / "latin1.json", "UTF-8"),
            (t / "array.json", "must be an object"), (t / "deep.json", "nested too deeply"),
            (t / "bigint.json", "not valid JSON"), (t / "nan.json", "'sigma_data'"),
            (t / "missing.json", "cannot read config file"), ("/dev/urandom", "character device")]


def test_cli_config_files_must_be_small_regular_files(golden_files, capsys, tmp_path):
    src = golden_files[0] / "plain.safetensors"
    for path, fragment in _config_files(tmp_path):
        run_cli([src, tmp_path / "out", "--config", path], capsys, match=fragment)
        one_line_error(config_lib.load_json, str(path), match=fragment)
    assert not (tmp_path / "out").exists()


def test_converted_config_json_must_be_a_small_regular_file(golden_files, tmp_path):
    conv = tmp_path / "conv"
    shutil.copytree(golden_files[0] / "conv", conv)
    (conv / "config.json").unlink()
    os.symlink("/dev/zero", conv / "config.json")
    one_line_error(load_converted, conv, match="character device")
    one_line_error(load_teacher, conv, match="character device")
    (conv / "config.json").unlink()
    os.mkfifo(conv / "config.json")
    one_line_error(load_teacher, conv, match="named pipe")
    (conv / "config.json").unlink()
    with open(conv / "config.json", "wb") as f:
        f.truncate(64 * MiB)
    one_line_error(load_teacher, conv, match="bytes")


def test_converted_params_that_do_not_fit_config_are_refused_before_restore(golden_files, tmp_path):
    """config.json of another (bigger) network over these params: refused from the orbax metadata."""
    conv = tmp_path / "conv"
    shutil.copytree(golden_files[0] / "conv", conv)
    cfg = json.loads((conv / "config.json").read_text())
    (conv / "config.json").write_text(json.dumps({**cfg, "model_channels": 256, "num_blocks": 8}))
    one_line_error(load_converted, conv, match="params do not match config.json")
    shutil.rmtree(conv / "params")
    one_line_error(load_converted, conv, match="no params/ directory")


# ---------------------------------------------------------------- E: StyleGAN2-ADA snapshots

def _stylegan_like_pickle() -> bytes:
    pytest.importorskip("torch")
    from convert_writers import EasyDict, Persistent, fake_edm_modules

    def net(name):
        return Persistent(name, {"_parameters": {}, "_buffers": {}, "_modules": {}, "_init_args": (),
                                 "_init_kwargs": {"z_dim": 32}}, "class X: pass")

    data = {"training_set_kwargs": EasyDict(path="cifar10.zip"), "G": net("Generator"),
            "D": net("Discriminator"), "G_ema": net("Generator"), "augment_pipe": net("AugmentPipe")}
    with fake_edm_modules():
        return pickle.dumps(data, protocol=4)


def test_stylegan_layout_described_from_top_level_keys():
    from di_jax.convert import edm_pickle

    top = edm_pickle.load_pickle(_stylegan_like_pickle())
    message = catalogue.describe_layout(top)
    assert "StyleGAN2-ADA" in message and "issue 16" in message and "G_ema" in message and "\n" not in message
    assert catalogue.describe_layout({"ema": 1, "loss_fn": 2}) is None
    assert catalogue.describe_layout([1, 2]) is None
    assert catalogue.describe_layout({("G",): 1, "D": 2}) is None
    if os.path.exists(STYLEGAN_PKL):
        assert "StyleGAN2-ADA" in catalogue.describe_layout(edm_pickle.load_pickle(STYLEGAN_PKL))


def test_stylegan_snapshot_named_by_the_converter(tmp_path, capsys):
    """A snapshot without 'ema' but with G, D, G_ema is named as such (catalogue.describe_layout)."""
    (tmp_path / "sg.pkl").write_bytes(_stylegan_like_pickle())
    paths = [tmp_path / "sg.pkl"] + ([STYLEGAN_PKL] if os.path.exists(STYLEGAN_PKL) else [])
    for path in paths:
        message = one_line_error(load_teacher, path)
        assert message.startswith("pickle is a StyleGAN2-ADA / StyleGAN3 network snapshot (top-level keys "), message
        assert "G_ema" in message, message
        assert message.endswith("not an EDM diffusion snapshot: DI's GAN refinement reader (issue 16) will read "
                                "it; the diffusion-teacher converter does not"), message
        err = run_cli([path, tmp_path / "out"], capsys)
        assert err.strip() == f"di-jax convert: error: {message}", err


# ---------------------------------------------------------------- F: di-jax distill command line

def _child(args, cwd, env=None) -> tuple:
    """(returncode, stderr, wall seconds, peak RSS bytes) of a child python process run in `cwd`."""
    child_env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    with open(os.devnull, "wb") as out, open(os.path.join(cwd, ".child_err"), "w+b") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable] + args, stdout=out, stderr=err, cwd=cwd, env=child_env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    os.unlink(os.path.join(cwd, ".child_err"))
    return proc.returncode, text, seconds, usage.ru_maxrss * 1024


@pytest.fixture(scope="module")
def import_baseline(tmp_path_factory):
    """Wall time and peak RSS of `import di_jax.main` alone (what every failing run pays anyway)."""
    cwd = str(tmp_path_factory.mktemp("baseline"))
    runs = [_child(["-c", "import di_jax.main"], cwd=cwd) for _ in range(2)]
    assert all(r[0] == 0 for r in runs), runs[0][1][-2000:]
    return min(r[2] for r in runs), max(r[3] for r in runs)


@pytest.fixture(scope="module")
def bad_teachers(tmp_path_factory):
    """Teacher paths that must fail at load: (path, message fragment)."""
    from safetensors.numpy import save_file

    t = tmp_path_factory.mktemp("teachers")
    sd, cfg, pc = golden()
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(t / "blocks.safetensors"),
              metadata={"edm_config": json.dumps({**cfg, "precond": pc, "num_blocks": 1e9})})
    os.mkfifo(t / "fifo.safetensors")
    (t / "notes.pt").write_text("not a checkpoint\n")
    (t / "emptydir").mkdir()
    sd2 = {k: np.array(v) for k, v in sd.items()}
    sd2[_KEY].reshape(-1)[0] = np.nan
    save_file({k: np.ascontiguousarray(v) for k, v in sd2.items()}, str(t / "nan.safetensors"),
              metadata={"edm_config": json.dumps({**cfg, "precond": pc})})
    return [(t / "missing.safetensors", "no such file"), (t / "blocks.safetensors", "'num_blocks'"),
            (t / "fifo.safetensors", "named pipe"), (t / "notes.pt", "is a text file"),
            (t / "emptydir", "is a directory"), (t / "nan.safetensors", "1 NaN"), ("/dev/zero", "character device")]


DISTILL_BAD_ARGS = [
    (["--config.batch_size=abc"], "--config.batch_size=abc"),
    (["--config.nope=3"], "no field 'nope'"),
    (["--config.gen_optim.lrr=1e-4"], "no field 'lrr'"),
    (["--config.method=zzz"], "config.method must be one of"),
    (["--config.gen_optim.lr=-1"], "config.gen_optim.lr must be > 0"),
    (["--config.gen_optim.b1=1.5"], "b1/b2 must lie in"),
    (["--config.networks.dtype=float64"], "config.networks.dtype must be one of"),
    (["--config.eval.kind=fid"], "config.eval.kind must be one of"),
    (["--config=/nonexistent/config.py"], "/nonexistent/config.py"),
    (["--bogus_flag"], "Unknown command line flag 'bogus_flag'"),
    (["positional"], "unexpected arguments: positional"),
]


def _distill(args, tmp_path, env=None):
    workdir = tmp_path / "run"
    rc, err, seconds, rss = _child(["-m", "di_jax.main", "--config", "digits_sim", f"--workdir={workdir}"] + args,
                                   cwd=str(tmp_path), env=env)
    return rc, err, seconds, rss, workdir


def _check_distill_failure(result, fragment, baseline):
    rc, err, seconds, rss, workdir = result
    lines = err.strip().splitlines()
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err and lines and lines[-1].startswith("di-jax distill: error: "), err[-3000:]
    assert sum("error:" in line for line in lines) == 1 and fragment in lines[-1], err[-3000:]
    assert seconds - baseline[0] < TIME_LIMIT_S, f"{seconds:.1f} s vs import {baseline[0]:.1f} s"
    assert rss - baseline[1] < MEMORY_LIMIT, f"peak RSS {rss / MiB:.0f} MiB vs import {baseline[1] / MiB:.0f} MiB"
    assert not workdir.exists(), "a failed run left its workdir behind"


@pytest.mark.parametrize("i", range(len(DISTILL_BAD_ARGS)))
def test_distill_bad_command_line(i, tmp_path, import_baseline):
    args, fragment = DISTILL_BAD_ARGS[i]
    _check_distill_failure(_distill(args, tmp_path), fragment, import_baseline)


def test_distill_bad_teachers_leave_no_workdir(tmp_path, import_baseline, bad_teachers):
    for path, fragment in bad_teachers:
        _check_distill_failure(_distill([f"--config.teacher.path={path}", "--config.num_devices=1"], tmp_path),
                               fragment, import_baseline)


def test_distill_verbose_prints_the_traceback(tmp_path):
    for args, env in ((["--config.nope=3", "--verbose"], None), (["--config.nope=3"], {"DI_JAX_VERBOSE": "1"})):
        rc, err, _, _, workdir = _distill(args, tmp_path, env)
        assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("di-jax distill: error:")
        assert not workdir.exists()


def test_distill_through_the_di_jax_command(tmp_path, import_baseline):
    rc, err, seconds, _ = _child(["-m", "di_jax.cli", "distill", "--config", "toy_ring:sim", "--config.nope=1",
                                  f"--workdir={tmp_path / 'run'}"], cwd=str(tmp_path))
    assert rc == 2 and err.strip().splitlines()[-1].startswith("di-jax distill: error: ") and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- counts

def test_hostile_input_counts():
    """Hostile inputs per class (each variant is one input; channels multiply some of them)."""
    counts = {
        "A config values (API)": len(BAD_VALUES) + len(BAD_COMBINATIONS) + len(BAD_STRUCTURES),
        "A config values (CLI --config text+file, safetensors metadata, config.json, pickled kwargs)":
            len(CHANNEL_VALUES) * 5 + 4 + 2,
        "B non-finite weights (3 formats, API + CLI + converted dir + save)": len(NONFINITE) * 3 + 4 + 1,
        "C wrong-typed API arguments": len(WRONG_ARGS) + 1,
        "D di-jax convert (exception kinds, sha256, config files)": len(RAISED) + 8 + 12 + 4 + 2,
        "E StyleGAN2-ADA snapshot": 2,
        "F di-jax distill (command line, teachers)": len(DISTILL_BAD_ARGS) + 7 + 1,
    }
    print("\n" + "\n".join(f"{n:4d}  {k}" for k, n in counts.items()) + f"\n{sum(counts.values()):4d}  total")
    assert all(n >= 2 for n in counts.values())
