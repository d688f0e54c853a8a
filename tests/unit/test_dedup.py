"""Bulk MinHash vs datasketch (bit for bit), LSH clustering vs datasketch's MinHashLSH, normalisation keys."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash, MinHashLSH
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.dedup import (
    cluster_global,
    cluster_within_groups,
    exact_within_groups,
    permutations,
    shingle,
    signatures,
    signatures_from_hashes,
)
from builder.dedup.minhash import words

TRICKY = ["", "   ", "one", "two words", "Ünïcode wörds — and “quotes”, again and again and again.",
          "Line one.\nLine two!\n\n  Tabs\tand   spaces...", "x" * 300, "1,600 + 2.5 = 1,602.5; done."]


def _datasketch(text: str, num_perm: int, seed: int, ngram: int, scheme: str) -> MinHash:
    m = MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
    ws = words(text)
    if ws:
        grams = [ws] if len(ws) < ngram else [ws[i: i + ngram] for i in range(len(ws) - ngram + 1)]
        m.update_batch([" ".join(g).encode("utf-8") for g in grams])
    return m


@pytest.fixture(scope="module")
def rationales(teacher_completions_dir) -> pl.Series:
    df = pl.concat([pl.read_ndjson(teacher_completions_dir / f"{t}.jsonl").select("rationale")
                    for t in ("multiarith", "date_understanding", "coin_flip")])
    return pl.concat([df["rationale"].head(60), pl.Series(TRICKY)])


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize(("num_perm", "seed", "ngram"), [(128, 1, 5), (64, 42, 3), (16, 7, 1)])
def test_signatures_bit_identical_to_datasketch(rationales, scheme, num_perm, seed, ngram):
    sig = signatures(rationales, num_perm=num_perm, seed=seed, ngram=ngram, scheme=scheme, hash="sha1")
    for i, text in enumerate(rationales.to_list()):
        ref = _datasketch(text, num_perm, seed, ngram, scheme)
        assert sig.dtype == ref.hashvalues.dtype
        np.testing.assert_array_equal(sig[i], ref.hashvalues, err_msg=f"row {i}: {text[:40]!r}")


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_permutations_match_datasketch(scheme):
    perm = permutations(128, 3, scheme)
    a, b = MinHash(num_perm=128, seed=3, scheme=scheme).permutations
    np.testing.assert_array_equal(perm.a, a)
    np.testing.assert_array_equal(perm.b, b)


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("hash_", ["fast", "sha1"])
def test_numpy_reference_path_matches_kernel(rationales, scheme, hash_):
    sh = shingle(rationales, 5, hash_)
    perm = permutations(64, 1, scheme)
    np.testing.assert_array_equal(signatures_from_hashes(sh.hashes, sh.starts, perm),
                                  signatures_from_hashes(sh.hashes, sh.starts, perm, use_numba=False))


def test_fast_hash_estimates_true_jaccard(rationales):
    """Different input hash, same estimator: estimates track the exact shingle-set Jaccard."""
    texts = rationales.head(60).to_list()
    edited = [t.replace(" the ", " a ", 2) + " That is all." for t in texts]
    sig = signatures(pl.Series(texts + edited), num_perm=256, ngram=3)
    errors = []
    for i in range(len(texts)):
        def grams(t):
            ws = words(t)
            return {" ".join(ws[j: j + 3]) for j in range(max(1, len(ws) - 2))}
        a, b = grams(texts[i]), grams(edited[i])
        true = len(a & b) / len(a | b)
        errors.append(abs((sig[i] == sig[len(texts) + i]).mean() - true))
    assert np.mean(errors) < 0.04 and max(errors) < 0.15


_SEPARATORS = st.text(alphabet=" \t\n.,;:!?-()\"'", min_size=1, max_size=3)
_ASCII_UPPER = {c: c - 32 for c in range(97, 123)}


@st.composite
def _key_pairs(draw) -> tuple[str, str]:
    """(a, b): independent texts (keys almost always differ), b a re-spelling of a's words (ASCII case, other
    separators: the keys must be equal), or a re-spelling with one character changed (a near miss)."""
    a = draw(st.text(max_size=40))
    kind = draw(st.sampled_from(["independent", "respelled", "near_miss"]))
    if kind == "independent":
        return a, draw(st.text(max_size=40))
    ws = words(a) or [draw(st.text(alphabet="abc", min_size=1, max_size=3))]
    seps = [draw(_SEPARATORS) for _ in range(len(ws) + 1)]
    upper = draw(st.booleans())
    b = seps[0] + "".join((w.translate(_ASCII_UPPER) if upper else w) + sep
                          for w, sep in zip(ws, seps[1:], strict=True))
    if kind == "near_miss":
        i = draw(st.integers(0, len(b) - 1))
        b = b[:i] + draw(st.sampled_from(["x", "1", "", " ab"])) + b[i + 1:]
    return (a if words(a) else " ".join(ws)), b


@settings(max_examples=300, deadline=None)
@given(_key_pairs())
def test_row_keys_are_normalised_text_equality(pair):
    a, b = pair
    keys = shingle(pl.Series([a, b]), 5).row_keys
    assert (keys[0] == keys[1]) == (words(a) == words(b))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_kernel_words_match_python_normalisation(text):
    sh = shingle(pl.Series([text]), 1, "fast")
    assert sh.starts[-1] == len(words(text))  # one 1-gram per word


def _baseline_clusters(texts: list[str], groups: list[int], bands: int, threshold: float) -> np.ndarray:
    """datasketch: MinHash per text, MinHashLSH, verify candidates of the same group, keep the lowest index."""
    sketches = [_datasketch(t, 128, 1, 5, "affine32") for t in texts]
    lsh = MinHashLSH(num_perm=128, params=(bands, 128 // bands))
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    parent = list(range(len(texts)))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for i, m in enumerate(sketches):
        for j in lsh.query(m):
            if j > i and groups[i] == groups[j] and m.jaccard(sketches[j]) >= threshold:
                ri, rj = find(i), find(j)
                parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(len(texts))])


def test_within_question_clusters_match_datasketch_lsh(rationales):
    """Planted paraphrases of real rationales; our banding + union-find == datasketch's LSH decisions."""
    base = rationales.head(40).to_list()
    texts, groups = [], []
    for g, t in enumerate(base):
        variants = [t, t.upper(), t + " So that is it.", t.replace(".", ",", 1), " ".join(reversed(t.split())),
                    "Completely different reasoning about apples and pears and oranges here."]
        texts += variants
        groups += [g] * len(variants)
    sig = signatures(pl.Series(texts), hash="sha1")
    gs = np.flatnonzero(np.r_[True, np.diff(groups) != 0, True]).astype(np.int64)
    for threshold in (0.5, 0.8, 0.95):
        ours = cluster_within_groups(sig, gs, bands=16, threshold=threshold)
        np.testing.assert_array_equal(ours, _baseline_clusters(texts, groups, 16, threshold))
    roots = cluster_within_groups(sig, gs, bands=16, threshold=0.8)
    assert (roots[1::6] == np.arange(0, len(texts), 6)).all()  # upper-cased copy: same shingles, same cluster


def test_global_clusters_cross_questions():
    texts = ["Megan has 11 pieces of candy and eats 8 a day so it lasts 2 days in total here.",
             "Bianca picked 26 carrots and 16 were good so 10 of them were bad ones in the end.",
             "megan has 11 pieces of candy, and eats 8 a day so it lasts 2 days in total here!",
             "An unrelated text about trains leaving stations at different speeds every hour."]
    sig = signatures(pl.Series(texts))
    np.testing.assert_array_equal(cluster_global(sig, bands=16, threshold=0.8), [0, 1, 0, 3])
    np.testing.assert_array_equal(cluster_global(sig, bands=16, threshold=0.8, window=1), [0, 1, 0, 3])


def test_exact_within_groups_keeps_first_per_group():
    keys = np.array([5, 5, 7, 5, 7, 5], dtype=np.uint64)
    gs = np.array([0, 3, 6])
    np.testing.assert_array_equal(exact_within_groups(keys, gs), [0, 0, 2, 3, 4, 3])


def test_empty_texts_have_empty_signature_and_no_shingles():
    sh = shingle(pl.Series(["", " ,.; ", "a"]), 5)
    assert list(np.diff(sh.starts)) == [0, 0, 1]
    sig = signatures(pl.Series(["", "a"]))
    assert (sig[0] == np.iinfo(np.uint32).max).all()
