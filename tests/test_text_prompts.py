"""The prompt pipeline: the on-disk format of precomputed text embeddings, its per-host reader (sharding, resume),
the in-graph prompt table, and `di-jax embed-prompts` with a tiny random T5 built offline."""

import json
import os
import zipfile

import jax
import numpy as np
import pytest

from di_jax.text import PromptDataError, PromptEmbeddings, host_positions, permute, write_prompt_embeddings
from di_jax.text.table import prompt_table, sample_prompts


def make_set(path, n=10, L=5, C=3, labels=True, dtype="float32", shard_size=4, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, L, C)).astype(np.float32)
    lengths = rng.integers(1, L + 1, n)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.uint8)
    prompts = [f"prompt number {i}" for i in range(n)]
    lab = (np.arange(n) % 7) if labels else None
    null = (rng.standard_normal((1, L, C)).astype(np.float32), np.eye(1, L, dtype=np.uint8))
    write_prompt_embeddings(path, emb, mask, prompts, lab, null, dtype=dtype, shard_size=shard_size)
    return emb, mask, prompts, lab, null


def one_line(fn, *words, error=PromptDataError):
    with pytest.raises(error) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_round_trip(tmp_path):
    emb, mask, prompts, lab, null = make_set(tmp_path / "a", n=10, shard_size=4)
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [4, 4, 2] and index["count"] == 10
    ds = PromptEmbeddings(tmp_path / "a")
    rows = ds.load_all()
    np.testing.assert_array_equal(rows.embeddings, emb)
    np.testing.assert_array_equal(rows.mask, mask.astype(np.float32))
    assert rows.prompt.tolist() == prompts and rows.label.tolist() == lab.tolist()
    order = np.array([9, 0, 4, 4, 3])                 # across shards, out of order, repeated
    got = ds.rows(order)
    np.testing.assert_array_equal(got.embeddings, emb[order])
    assert got.prompt.tolist() == [prompts[i] for i in order]
    e0, m0 = ds.null()
    np.testing.assert_array_equal(e0, null[0])
    np.testing.assert_array_equal(m0, null[1].astype(np.float32))
    # float16 storage: values are the float16 roundings, read back as float32
    emb16, *_ = make_set(tmp_path / "h", dtype="float16", labels=False)
    ds16 = PromptEmbeddings(tmp_path / "h")
    np.testing.assert_array_equal(ds16.load_all().embeddings, emb16.astype(np.float16).astype(np.float32))
    assert ds16.load_all().label is None
    with zipfile.ZipFile(tmp_path / "a" / "shard-00000.npz") as z:      # stored, so the reader maps it
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}


def test_permutation_is_a_bijection():
    for n in (1, 2, 3, 5, 64, 1000, 4097):
        for key in (0, 1, 2 ** 63 + 11):
            p = permute(np.arange(n), n, key)
            assert np.array_equal(np.sort(p), np.arange(n)), (n, key)
    a, b = permute(np.arange(1000), 1000, 1), permute(np.arange(1000), 1000, 2)
    assert np.mean(a == b) < 0.05 and np.mean(a == np.arange(1000)) < 0.05


def test_two_hosts_split_the_global_batch(tmp_path):
    make_set(tmp_path / "a", n=10)
    ds = PromptEmbeddings(tmp_path / "a")
    for step in (0, 1, 7):
        whole = ds.batch(step, 8, seed=3)
        h0 = ds.batch(step, 8, seed=3, process_index=0, process_count=2)
        h1 = ds.batch(step, 8, seed=3, process_index=1, process_count=2)
        assert len(h0.index) == len(h1.index) == 4
        np.testing.assert_array_equal(np.concatenate([h0.index, h1.index]), whole.index)
        np.testing.assert_array_equal(np.concatenate([h0.embeddings, h1.embeddings]), whole.embeddings)
        p0, p1 = host_positions(step, 8, 0, 2), host_positions(step, 8, 1, 2)
        assert not set(p0) & set(p1) and sorted(set(p0) | set(p1)) == list(range(8 * step, 8 * step + 8))
    # an epoch is a permutation: 5 steps of 4 visit every row of the 10 exactly twice (epochs 0 and 1)
    seen = np.concatenate([ds.batch(s, 4, seed=3).index for s in range(5)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert not np.array_equal(seen[:10], seen[10:])            # each epoch has its own order
    one_line(lambda: ds.batch(0, 6, seed=0, process_count=4), "not divisible")
    one_line(lambda: ds.batch(0, 8, seed=0, process_index=2, process_count=2), "process_index")


def test_resume_continues_identically(tmp_path):
    make_set(tmp_path / "a", n=10)
    run = [b.index for _, b in zip(range(6), PromptEmbeddings(tmp_path / "a").batches(0, 4, seed=5))]
    resumed = [b.index for _, b in zip(range(3), PromptEmbeddings(tmp_path / "a").batches(3, 4, seed=5))]
    for a, b in zip(run[3:], resumed):
        np.testing.assert_array_equal(a, b)
    # resumed on two hosts: the same global batches
    ds = PromptEmbeddings(tmp_path / "a")
    two = [np.concatenate([ds.batch(s, 4, 5, p, 2).index for p in range(2)]) for s in range(3, 6)]
    for a, b in zip(run[3:], two):
        np.testing.assert_array_equal(a, b)
    other = np.concatenate([ds.batch(s, 4, seed=6).index for s in range(3)])
    assert not np.array_equal(other, np.concatenate(run[:3]))


def test_bad_directories_fail_in_one_line(tmp_path):
    one_line(lambda: PromptEmbeddings(tmp_path), "no index.json")
    make_set(tmp_path / "a", n=6)
    index_path = tmp_path / "a" / "index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps(dict(index, width=4)))
    one_line(lambda: PromptEmbeddings(tmp_path / "a"), "shard-00000.npz", "embeddings", "(4, 5, 4)")
    index_path.write_text(json.dumps(dict(index, shards=[{"file": "../x.npz", "count": 6}])))
    one_line(lambda: PromptEmbeddings(tmp_path / "a"), "every shard")
    index_path.write_text(json.dumps(dict(index, count=7)))
    one_line(lambda: PromptEmbeddings(tmp_path / "a"), "add up to 6")
    index_path.write_text(json.dumps(index))
    shard = tmp_path / "a" / "shard-00001.npz"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    one_line(lambda: PromptEmbeddings(tmp_path / "a"), "shard-00001.npz")
    with pytest.raises(PromptDataError, match="already holds"):
        make_set(tmp_path / "a")
    bad_mask = np.full((2, 5), 2)
    one_line(lambda: write_prompt_embeddings(tmp_path / "b", np.zeros((2, 5, 3)), bad_mask, ["a", "b"]), "mask")
    one_line(lambda: write_prompt_embeddings(tmp_path / "c", np.zeros((2, 5, 3)), np.ones((2, 5)), ["a"]),
             "1 prompts for 2")
    nan = np.zeros((1, 5, 3))
    nan[0, 0, 0] = np.nan
    one_line(lambda: write_prompt_embeddings(tmp_path / "d", nan, np.ones((1, 5)), ["a"]), "NaN")


def test_compressed_shards_are_read(tmp_path):
    emb, *_ = make_set(tmp_path / "a", n=6, shard_size=6)
    path = tmp_path / "a" / "shard-00000.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(path, **arrays)
    np.testing.assert_array_equal(PromptEmbeddings(tmp_path / "a").load_all().embeddings, emb)


def test_prompt_table_sampling(tmp_path):
    emb, mask, _, lab, null = make_set(tmp_path / "a", n=10)
    table = prompt_table(PromptEmbeddings(tmp_path / "a"))
    key = jax.random.PRNGKey(0)
    sample = jax.jit(sample_prompts, static_argnums=(2, 3))
    cond, labels, rows = sample(table, key, 4000, 0.25)
    cond2, _, rows2 = sample(table, key, 4000, 0.25)
    np.testing.assert_array_equal(np.asarray(rows), np.asarray(rows2))
    e, m, r = np.asarray(cond.embeddings), np.asarray(cond.mask), np.asarray(rows)
    dropped = np.all(e == null[0][0], axis=(1, 2))
    assert 0.22 < dropped.mean() < 0.28
    np.testing.assert_array_equal(e[~dropped], emb[r[~dropped]])
    np.testing.assert_array_equal(m[dropped], np.broadcast_to(null[1][0], m[dropped].shape))
    np.testing.assert_array_equal(np.asarray(labels), lab[r])
    assert np.asarray(cond2.embeddings).shape == (4000, 5, 3)
    assert set(np.unique(r)) == set(range(10))


# ---------------------------------------------------------------- di-jax embed-prompts with a tiny random T5

@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    pytest.importorskip("transformers")
    from di_jax.text.tiny_t5 import build_tiny_t5

    folder = tmp_path_factory.mktemp("t5") / "encoder"
    return build_tiny_t5(folder, ["a handwritten seven", "the digit 7", "number three", "one two"], seed=0)


def test_embed_prompts_command(tmp_path, tiny_t5, capsys):
    import torch
    import transformers

    from di_jax import cli

    txt = tmp_path / "prompts.txt"
    txt.write_text("7\tA handwritten seven\n\n7\tthe digit 7\n3\tnumber three  \n1\tone two zebra\n")
    out = tmp_path / "emb"
    rc = cli.main(["embed-prompts", "--prompts", str(txt), "--encoder", tiny_t5, "--out", str(out), "--labels",
                   "--max-length", "6", "--batch-size", "3", "--shard-size", "2", "--dtype", "float32"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "embedded 4/4 prompts" in printed and "4 prompts ->" in printed
    ds = PromptEmbeddings(out)
    rows = ds.load_all()
    assert rows.embeddings.shape == (4, 6, 32) and len(ds.index["shards"]) == 2
    assert rows.label.tolist() == [7, 7, 3, 1] and rows.prompt[0] == "A handwritten seven"
    # T5 appends </s>; "zebra" is not in the vocabulary: <unk>, still one token
    np.testing.assert_array_equal(rows.mask.sum(1), [4, 4, 3, 4])
    np.testing.assert_array_equal(ds.null()[1], [[1, 0, 0, 0, 0, 0]])
    # the same numbers as the encoder run directly (lower-cased prompt, PixArt's tokenizer arguments)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_t5)
    model = transformers.T5EncoderModel.from_pretrained(tiny_t5).eval()
    ids = tok(["a handwritten seven", ""], padding="max_length", max_length=6, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask)[0].numpy()
    np.testing.assert_allclose(rows.embeddings[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.null()[0][0], want[1], rtol=1e-5, atol=1e-6)
    assert np.abs(rows.embeddings[0] - rows.embeddings[1]).max() > 0.1      # different prompts, different states


def test_embed_prompts_errors(tmp_path, tiny_t5, capsys):
    from di_jax.text import cli

    txt = tmp_path / "p.txt"
    txt.write_text("seven\tno label\n")
    rc = cli.main(["di-jax embed-prompts", "--prompts", str(txt), "--encoder", tiny_t5, "--out", str(tmp_path / "o"),
                   "--labels"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "p.txt:1: with --labels" in err
    rc = cli.main(["di-jax embed-prompts", "--prompts", str(txt), "--encoder", str(tmp_path), "--out",
                   str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no T5 config.json" in err
    assert not os.path.exists(tmp_path / "o")
