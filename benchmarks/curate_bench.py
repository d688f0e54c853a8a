"""Curation benchmark: ours and a datasketch baseline on the same rows, then ours on 1,000,000 synthetic rationales.

Data: Q questions x N samples of arithmetic word-problem rationales in the style of text-davinci-002's
Zero-shot-CoT outputs (6-7 sentences, 5 phrasings each, question-specific names/objects/numbers), with planted
duplicates: copies of an earlier sample of the same question, edited one of the ways in EDITS: single edits
(case/punctuation/spacing, a changed first or last word, an extra closing sentence) and paraphrases (two clauses
swapped, synonyms swapped in, a number changed, all three at once). Many paraphrases fall near or below the
Jaccard threshold on purpose: that is where the two implementations can disagree.

Near-dup comparison on one subset of whole questions (--baseline-rows), same run, same rows, same knobs:
- ours: `curate.run` with only the near-dup stage on (exact dedup, filters and correctness off), hash "fast"
  (our vectorised word hash; numba threads as reported) and hash "sha1" (datasketch's shingle hash: signatures
  bit-identical to datasketch's, so any difference is an algorithm difference). Also ours single-threaded.
- baseline: datasketch as its docs advise for many sketches: one shared permutation array (`MinHash.bulk` with
  `permutations=`), the same scheme, seed, num_perm and shingles (`builder.dedup.minhash.words`), `LeanMinHash`
  in a `MinHashLSH(params=(bands, rows))`; candidates of the same question kept when `jaccard >= threshold`,
  clustered keeping the lowest sample (our decision rule).
- precision / recall of our drops against the baseline's, overall and for rows whose exact Jaccard to their most
  similar earlier sibling lies within +-0.1 of the threshold (where "keep everything" scores recall 0); the exact
  shingle-set Jaccard decision is reported as well, as ground truth for both.

Then the full `curate.run` (filters, correctness, exact + near dedup, diverse selection of k, diversity,
decontamination against 1,000 eval questions with 20 planted copies) on --rows rows. JIT warm-up (numba
compile or cache load) is timed apart.

    python benchmarks/curate_bench.py [--rows 1000000] [--per-question 8] [--k 4] [--baseline-rows 20000]

Last line: JSON (rows/s of ours and the baseline on the same rows, speedup, precision, recall, threads,
jit_warmup_s, peak_rss_mb, and the 1M-row figures).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import polars as pl
from _baseline import cluster_drops, lsh_drops, precision_recall, text_shingles

NAMES = ["Megan", "Bianca", "Paige", "Sam", "Jason", "Kelly", "Haley", "Sandy", "Julia", "Melissa", "Russ", "Tina",
         "Omar", "Priya", "Lucas", "Chen", "Amara", "Diego", "Fatima", "Noah", "Olga", "Kenji", "Zara", "Ivan"]
OBJECTS = ["apples", "marbles", "stickers", "cupcakes", "balloons", "pencils", "books", "peaches", "cards", "shells",
           "coins", "stamps", "toy cars", "oranges", "plums", "beads"]
# Each sentence slot has 5 phrasings; {n}=name, {o}=object, {a},{b},{c}=numbers.
SLOTS = [
    ["{n} has {a} {o} at the start.", "At first, {n} had {a} {o}.", "{n} starts out with {a} {o}.",
     "In the beginning there are {a} {o} with {n}.", "We know that {n} owns {a} {o} to begin with."],
    ["Then {n} gets {b} more {o} from a friend.", "After that, {n} receives another {b} {o}.",
     "Next, {b} extra {o} are given to {n}.", "Later {n} is handed {b} more {o} by a neighbor.",
     "{n} then collects {b} additional {o} at school."],
    ["So we need to add the two amounts together.", "To find the total, we add {a} and {b}.",
     "The question asks for the total, which means addition.", "We combine both groups of {o} to get the total.",
     "Since {n} gained {o}, the number goes up, so we add."],
    ["{a} + {b} = {c}.", "{a} plus {b} equals {c}.", "Adding them gives us {c}.", "If we add {b} to {a} we get {c}.",
     "The sum of {a} and {b} is {c}."],
    ["That means {n} has {c} {o} now.", "So {n} now has {c} {o} in total.", "Therefore there are {c} {o} altogether.",
     "In the end {n} is left holding {c} {o}.", "As a result, {n} owns {c} {o}."],
    ["Let's double check: {c} minus {b} is {a}, which matches.", "This makes sense because the number of {o} went up.",
     "We can check it by counting up from {a} by {b}.", "The answer should be bigger than {a}, and it is.",
     "Everything adds up, so we are done."],
]


SYNONYMS = [("gets", "obtains"), ("more", "extra"), ("total", "sum"), ("add", "sum up"), ("Then", "Afterwards"),
            ("now", "at this point"), ("number", "count"), ("start", "outset"), ("friend", "pal")]


def _reorder(r: pl.Expr) -> pl.Expr:
    """Swap the second and third sentence (clause order changes, the words do not)."""
    parts = r.str.split(". ")
    return pl.concat_list([parts.list.slice(0, 1), parts.list.slice(2, 1), parts.list.slice(1, 1),
                           parts.list.slice(3)]).list.join(". ")


def _synonyms(r: pl.Expr) -> pl.Expr:
    for old, new in SYNONYMS:
        r = r.str.replace_all(rf"\b{old}\b", new)
    return r


def _numbers(r: pl.Expr) -> pl.Expr:
    """Change the first number (the starting amount), everywhere it appears first: 12 -> 112."""
    return r.str.replace(r"(\d+)", "1${1}")


EDITS = [  # index = plant kind
    lambda r: r.str.to_uppercase().str.replace_all(r"\.", " .  "),  # exact after normalisation
    lambda r: r.str.replace(r"^ \n\S+", " \nWell,"),  # first word changed
    lambda r: r + " So that is the answer.",  # a closing sentence appended
    lambda r: r.str.replace(r"\S+$", "in total."),  # last word changed
    _reorder,  # paraphrase: clauses reordered
    _synonyms,  # paraphrase: synonyms
    _numbers,  # paraphrase: a number changed
    lambda r: _numbers(_synonyms(_reorder(r))),  # all three
]
EDIT_NAMES = ["case_punct", "first_word", "appended", "last_word", "reordered", "synonyms", "numbers", "paraphrase"]


def synth(rows: int, per_q: int, seed: int = 0,
          part_rows: int = 125_000) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    """(graded frame sorted by qid/sample_idx, eval questions with planted edited training questions, the plant
    kind of every row: an index into EDITS, -1 when not a planted copy).

    Built in parts so the generator's temporaries stay small next to the 1M-row frame itself.
    """
    parts, kinds, evals = [], [], None
    for i, lo in enumerate(range(0, rows, part_rows)):
        graded, ev, kind = _synth_part(min(part_rows, rows - lo), per_q, seed + i, lo // per_q)
        parts.append(graded)
        kinds.append(kind)
        evals = ev if evals is None else evals
    return pl.concat(parts, rechunk=True), evals, np.concatenate(kinds)


def _synth_part(rows: int, per_q: int, seed: int, q0: int) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rows // per_q
    n = q * per_q
    name = rng.integers(0, len(NAMES), q)
    obj = rng.integers(0, len(OBJECTS), q)
    a = rng.integers(2, 90, q)
    b = rng.integers(2, 90, q)
    qframe = pl.DataFrame({"qi": np.arange(q), "n": np.array(NAMES)[name], "o": np.array(OBJECTS)[obj],
                           "a": a.astype(str), "b": b.astype(str), "c": (a + b).astype(str)})
    qframe = qframe.with_columns(
        question=pl.format("{} has {} {}. Then {} gets {} more {}. How many {} does {} have now?", "n", "a", "o", "n",
                           "b", "o", "o", "n"),
        qid=pl.format("q{}", (pl.col("qi") + q0).cast(pl.String).str.zfill(7)))
    df = pl.DataFrame({"qi": np.repeat(np.arange(q), per_q),
                       "sample_idx": np.tile(np.arange(per_q), q).astype(np.int32)})
    df = df.join(qframe, on="qi", how="left", maintain_order="left")
    choice = rng.integers(0, 5, (n, len(SLOTS)))
    choice[:, -1] = rng.integers(0, 6, n)  # the check sentence is optional (index 5 = none)

    def slot_expr(k: int) -> pl.Expr:
        expr = pl.lit("")
        for j, tpl in reversed(list(enumerate(SLOTS[k]))):
            parts = tpl.replace("{", "\x00{").replace("}", "}\x00").split("\x00")
            pieces = [pl.col(p[1:-1]) if p.startswith("{") else pl.lit(p) for p in parts if p]
            expr = pl.when(pl.col(f"s{k}") == j).then(pl.concat_str(pieces)).otherwise(expr)
        return expr

    df = df.with_columns([pl.Series(f"s{k}", choice[:, k]) for k in range(len(SLOTS))])
    text = pl.concat_str([slot_expr(k) for k in range(len(SLOTS))], separator=" ").str.strip_chars()
    df = df.with_columns(rationale=pl.lit(" \n") + text)
    # planted duplicates: the last two samples of 40% of questions copy an earlier sample of the same question,
    # edited (see EDITS): single edits, and paraphrases that reorder clauses, swap synonyms or change numbers
    kind = rng.integers(0, len(EDITS), n)
    src = np.arange(n) - rng.integers(1, per_q // 2 + 1, n)
    plant = (np.tile(np.arange(per_q), q) >= per_q - 2) & (np.repeat(rng.random(q) < 0.4, per_q))
    src = np.where(plant, src, np.arange(n))
    copied = pl.DataFrame({"r": df["rationale"].gather(src), "k": kind})
    edited = pl.when(pl.col("k") == 0).then(EDITS[0](pl.col("r")))
    for k in range(1, len(EDITS)):
        edited = edited.when(pl.col("k") == k).then(EDITS[k](pl.col("r")))
    df = df.with_columns(rationale=pl.when(pl.Series(plant)).then(copied.select(edited)["r"])
                         .otherwise(pl.col("rationale")))
    wrong = rng.random(n) < 0.15
    graded = df.select(
        "qid", "sample_idx", seed=pl.lit(0, pl.Int64), teacher=pl.lit("synthetic"),
        teacher_revision=pl.lit(None, pl.String), prompt=pl.format("Q: {}\nA: Let's think step by step.", "question"),
        rationale="rationale", answer_prompt=pl.lit("\nTherefore, the answer (arabic numerals) is"),
        answer_completion=pl.lit(" ") + pl.col("c") + pl.lit("."), finish_reason=pl.lit("stop"),
        prompt_tokens=pl.lit(None, pl.Int32), completion_tokens=pl.lit(None, pl.Int32), run_id=pl.lit("bench"),
        task=pl.lit("synthetic_add"), question="question", gold="c", answer_type=pl.lit("number"),
        pred=pl.when(pl.Series(wrong)).then(pl.lit("0")).otherwise(pl.col("c")), correct=pl.Series(~wrong),
        grade_status=pl.lit("ok"), grader=pl.lit("number"))
    # eval set: 1,000 unrelated questions plus 20 edited copies of training questions
    other = qframe.sample(min(1000, q), seed=seed + 1).select(
        question=pl.format("{} sold {} {} and kept {}. How many {} were there first?", "n", "a", "o", "b", "o"))
    planted = qframe.head(20).select(question=pl.col("question").str.replace("How many", "How many total"))
    evals = pl.concat([other, planted]).with_columns(task=pl.lit("eval_set"))
    return graded, evals, np.where(plant, kind, -1).astype(np.int8)


def shingle_sets(graded: pl.DataFrame, ngram: int) -> list[list[bytes]]:
    return [text_shingles(text, ngram) for text in graded["rationale"].to_list()]


def baseline(shingles: list[list[bytes]], qids: list[str], mh) -> np.ndarray:
    """datasketch near-dup decisions (True = dropped), with its fast path: shared permutations, bulk, LeanMinHash."""
    from datasketch import LeanMinHash, MinHash

    perms = MinHash(num_perm=mh.num_perm, seed=mh.seed, scheme=mh.scheme).permutations
    sketches = [LeanMinHash(m) for m in MinHash.bulk(shingles, num_perm=mh.num_perm, seed=mh.seed,
                                                      permutations=perms, scheme=mh.scheme)]
    return lsh_drops(sketches, qids, mh)


def exact_jaccard(shingles: list[list[bytes]], qids: list[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth on exact shingle sets: (drops by the same clustering rule, each row's best Jaccard to an
    earlier sibling of its question)."""
    sets = [set(s) for s in shingles]
    best = np.zeros(len(sets))
    pairs = []
    start = 0
    for i in range(len(sets)):
        if i and qids[i] != qids[i - 1]:
            start = i
        for j in range(start, i):
            union = len(sets[i] | sets[j])
            jac = len(sets[i] & sets[j]) / union if union else 1.0
            best[i] = max(best[i], jac)
            if jac >= threshold:
                pairs.append((j, i))
    return cluster_drops(len(sets), pairs), best


def ours_near_dup(graded: pl.DataFrame, cfg) -> tuple[np.ndarray, float]:
    """Our near-dup decisions (True = dropped) and the seconds `curate.run` took."""
    from builder import curate

    t = time.perf_counter()
    ledger, _ = curate.run(graded, cfg)
    seconds = time.perf_counter() - t
    return (ledger["stage"] == "near_dedup").fill_null(False).to_numpy(), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--per-question", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="max_per_question")
    ap.add_argument("--baseline-rows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numba

    from builder import curate
    from builder.kernels import HAVE_NUMBA
    from builder.recipe import CurationConfig

    t = time.perf_counter()
    graded, evals, kinds = synth(args.rows, args.per_question, args.seed)
    print(f"synthesised {graded.height:,} rationales ({graded['rationale'].str.len_bytes().mean():.0f} bytes avg) "
          f"in {time.perf_counter() - t:.1f}s")
    cfg = CurationConfig(selection={"max_per_question": args.k}, decontaminate=True)
    t = time.perf_counter()
    curate.run(graded.head(2 * args.per_question), cfg, eval_questions=evals)  # numba compile, or its cache load
    warmup = time.perf_counter() - t
    threads = numba.get_num_threads() if HAVE_NUMBA else 1
    print(f"JIT warm-up {warmup:.2f}s; numba threads {threads} (of {os.cpu_count()} CPUs)")

    # ---- near-dup only, ours and datasketch on the same whole questions
    nb = (args.baseline_rows // args.per_question) * args.per_question
    sub, sub_kinds = graded.head(nb), kinds[:nb]
    dd_cfg = CurationConfig(keep_correct_only=False, dedup_exact=False, filters=[])
    mh = dd_cfg.minhash
    qids = sub["qid"].to_list()
    t = time.perf_counter()
    shingles = shingle_sets(sub, mh.ngram)
    base = baseline(shingles, qids, mh)
    base_s = time.perf_counter() - t
    ours, ours_s = ours_near_dup(sub, dd_cfg)
    sha1, sha1_s = ours_near_dup(sub, dd_cfg.model_copy(update={"minhash": mh.model_copy(update={"hash": "sha1"})}))
    if HAVE_NUMBA:
        numba.set_num_threads(1)
    ours_1, ours_1_s = ours_near_dup(sub, dd_cfg)
    if HAVE_NUMBA:
        numba.set_num_threads(threads)
    assert (ours_1 == ours).all(), "thread count changed near-dup decisions"
    truth, best = exact_jaccard(shingles, qids, mh.threshold)
    near = np.abs(best - mh.threshold) <= 0.1
    print(f"near-dup on the same {nb:,} rows: ours {nb / ours_s:,.0f} rows/s ({threads} threads), "
          f"{nb / ours_1_s:,.0f} rows/s (1 thread), sha1 mode {nb / sha1_s:,.0f} rows/s; "
          f"datasketch {nb / base_s:,.0f} rows/s (shingling included)")
    by_kind = {name: {"rows": int((sub_kinds == k).sum()),
                      "dropped_ours": int(ours[sub_kinds == k].sum()),
                      "dropped_baseline": int(base[sub_kinds == k].sum()),
                      "dropped_exact": int(truth[sub_kinds == k].sum())}
               for k, name in enumerate(EDIT_NAMES)}
    print("planted copies dropped, by edit:", json.dumps(by_kind))
    vs_base = {"overall": precision_recall(ours, base), "near_threshold": precision_recall(ours[near], base[near]),
               "near_threshold_rows": int(near.sum())}
    vs_base_sha1 = precision_recall(sha1, base)
    vs_exact = {"ours": precision_recall(ours, truth),
                "ours_near_threshold": precision_recall(ours[near], truth[near]),
                "baseline": precision_recall(base, truth),
                "baseline_near_threshold": precision_recall(base[near], truth[near])}

    # ---- the full stage on all rows
    t = time.perf_counter()
    ledger, stats = curate.run(graded, cfg, eval_questions=evals)
    seconds = time.perf_counter() - t
    assert ledger.height == graded.height
    print(f"curate.run: {graded.height:,} rows in {seconds:.2f}s = {graded.height / seconds:,.0f} rows/s")
    stats = stats.to_json()
    print("funnel:", json.dumps(stats["funnel"]))
    print("dropped:", json.dumps(stats["dropped"]))
    print(f"decontamination: {len(stats['decontamination']['hits'])} hits (20 planted)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "same_rows": nb, "threads": threads, "cpus": os.cpu_count(), "jit_warmup_s": round(warmup, 3),
        "near_dup_rows_per_s": round(nb / ours_s), "near_dup_rows_per_s_1_thread": round(nb / ours_1_s),
        "near_dup_rows_per_s_sha1": round(nb / sha1_s), "baseline_rows_per_s": round(nb / base_s),
        "speedup": round(base_s / ours_s, 1), "speedup_1_thread": round(base_s / ours_1_s, 1),
        "ours_vs_baseline": vs_base, "ours_sha1_vs_baseline": vs_base_sha1, "vs_exact_jaccard": vs_exact,
        "rows": graded.height, "seconds": round(seconds, 3), "rows_per_s": round(graded.height / seconds),
        "peak_rss_mb": round(peak)}))


if __name__ == "__main__":
    main()
