"""Curation benchmark: 1,000,000 synthetic rationales through `curate.run`, against a datasketch baseline.

Data: Q questions x N samples of arithmetic word-problem rationales in the style of text-davinci-002's
Zero-shot-CoT outputs (6-7 sentences, 5 phrasings each, question-specific names/objects/numbers), with planted
paraphrase duplicates: copies of an earlier sample of the same question with case/punctuation/spacing changes
(exact after normalisation), a changed first or last word, or an extra closing sentence.

Timed: `curate.run(graded, CurationConfig(...))` end to end (filters, correctness, exact + MinHash near-dup
dedup within question, diverse selection of k per question, diversity figures, decontamination against
1,000 eval questions of which some are planted edited copies of training questions).

Baseline: what a user writes with datasketch: one `datasketch.MinHash` per rationale (default sha1 hash,
same num_perm/seed/shingles) inserted in a `MinHashLSH(params=(bands, rows))`, then each row is queried,
candidates of the same question verified with `MinHash.jaccard >= threshold` and clustered keeping the lowest
sample (the same decision rule as ours). It is timed on a subset of whole questions (--baseline-rows) and its
rows/s extrapolated; dedup_agreement compares keep/drop decisions of our near-dup stage (fast hash) with the
baseline's on that subset. dedup_agreement_sha1 runs ours with hash=sha1 on the same subset (bit-identical
signatures: any difference would be an algorithm difference).

    python benchmarks/curate_bench.py [--rows 1000000] [--per-question 8] [--k 4] [--baseline-rows 20000]

Last line: JSON with rows, seconds, rows_per_s, baseline_rows_per_s, speedup, dedup_agreement, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import polars as pl

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


def synth(rows: int, per_q: int, seed: int = 0, part_rows: int = 125_000) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(graded frame sorted by qid/sample_idx, eval questions with planted edited training questions).

    Built in parts so the generator's temporaries stay small next to the 1M-row frame itself.
    """
    parts, evals = [], None
    for i, lo in enumerate(range(0, rows, part_rows)):
        graded, ev = _synth_part(min(part_rows, rows - lo), per_q, seed + i, lo // per_q)
        parts.append(graded)
        evals = ev if evals is None else evals
    return pl.concat(parts, rechunk=True), evals


def _synth_part(rows: int, per_q: int, seed: int, q0: int) -> tuple[pl.DataFrame, pl.DataFrame]:
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
    # planted paraphrase duplicates: the last two samples of 40% of questions copy an earlier sample, edited
    kind = rng.integers(0, 4, n)
    src = np.arange(n) - rng.integers(1, per_q // 2 + 1, n)
    plant = (np.tile(np.arange(per_q), q) >= per_q - 2) & (np.repeat(rng.random(q) < 0.4, per_q))
    src = np.where(plant, src, np.arange(n))
    copied = df["rationale"].gather(src)
    edited = (pl.DataFrame({"r": copied, "k": kind})
              .select(pl.when(pl.col("k") == 0).then(pl.col("r").str.to_uppercase().str.replace_all(r"\.", " .  "))
                      .when(pl.col("k") == 1).then(pl.col("r").str.replace(r"^ \n\S+", " \nWell,"))
                      .when(pl.col("k") == 2).then(pl.col("r") + " So that is the answer.")
                      .otherwise(pl.col("r").str.replace(r"\S+$", "in total.")))["r"])
    df = df.with_columns(rationale=pl.when(pl.Series(plant)).then(edited).otherwise(pl.col("rationale")))
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
    return graded, evals


def baseline(graded: pl.DataFrame, num_perm: int, seed: int, ngram: int, bands: int, threshold: float) -> np.ndarray:
    """datasketch MinHash + MinHashLSH near-dup decisions (True = dropped) for `graded` (whole questions)."""
    from datasketch import MinHash, MinHashLSH

    from builder.dedup.minhash import words

    rows = num_perm // bands
    lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
    sketches = []
    for i, text in enumerate(graded["rationale"].to_list()):
        ws = words(text)
        grams = [ws] if len(ws) < ngram else [ws[j: j + ngram] for j in range(len(ws) - ngram + 1)]
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch([" ".join(g).encode("utf-8") for g in grams if g])
        lsh.insert(i, m)
        sketches.append(m)
    qids = graded["qid"].to_list()
    parent = list(range(len(sketches)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in enumerate(sketches):
        for j in lsh.query(m):
            if j > i and qids[j] == qids[i] and m.jaccard(sketches[j]) >= threshold:
                ri, rj = find(i), find(j)
                parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) != i for i in range(len(sketches))])


def ours_near_dup(graded: pl.DataFrame, cfg) -> np.ndarray:
    from builder import curate

    ledger, _ = curate.run(graded, cfg)
    return (ledger["stage"] == "near_dedup").fill_null(False).to_numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--per-question", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="max_per_question")
    ap.add_argument("--baseline-rows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from builder import curate
    from builder.recipe import CurationConfig

    t = time.perf_counter()
    graded, evals = synth(args.rows, args.per_question, args.seed)
    print(f"synthesised {graded.height:,} rationales ({graded['rationale'].str.len_bytes().mean():.0f} bytes avg) "
          f"in {time.perf_counter() - t:.1f}s")
    cfg = CurationConfig(selection={"max_per_question": args.k}, decontaminate=True)
    curate.run(graded.head(2 * args.per_question), cfg, eval_questions=evals)  # JIT warm-up (cached after 1st run)

    t = time.perf_counter()
    ledger, stats = curate.run(graded, cfg, eval_questions=evals)
    seconds = time.perf_counter() - t
    print(f"curate.run: {graded.height:,} rows in {seconds:.2f}s = {graded.height / seconds:,.0f} rows/s")
    stats = stats.to_json()
    print("funnel:", json.dumps(stats["funnel"]))
    print("dropped:", json.dumps(stats["dropped"]))
    print("diversity:", json.dumps(stats["diversity"]))
    print(f"decontamination: {len(stats['decontamination']['hits'])} hits (20 planted)")
    assert ledger.height == graded.height

    # baseline on a subset of whole questions; near-dup decisions only (rows surviving exact dedup etc. equally)
    nb = (args.baseline_rows // args.per_question) * args.per_question
    sub = graded.head(nb)
    dd_cfg = CurationConfig(keep_correct_only=False, dedup_exact=False, filters=[])
    mh = dd_cfg.minhash
    t = time.perf_counter()
    base = baseline(sub, mh.num_perm, mh.seed, mh.ngram, mh.bands, mh.threshold)
    base_s = time.perf_counter() - t
    base_rps = nb / base_s
    print(f"datasketch baseline (near-dup only): {nb:,} rows in {base_s:.2f}s = {base_rps:,.0f} rows/s")
    ours = ours_near_dup(sub, dd_cfg)
    agreement = float((ours == base).mean())
    sha1 = ours_near_dup(sub, dd_cfg.model_copy(update={"minhash": mh.model_copy(update={"hash": "sha1"})}))
    agreement_sha1 = float((sha1 == base).mean())
    print(f"near-dup drops on subset: ours {int(ours.sum())}, baseline {int(base.sum())}, "
          f"agreement {agreement:.5f} (fast hash), {agreement_sha1:.5f} (sha1 mode)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rps = graded.height / seconds
    print(json.dumps({"rows": graded.height, "seconds": round(seconds, 3), "rows_per_s": round(rps),
                      "baseline_rows_per_s": round(base_rps), "speedup": round(rps / base_rps, 1),
                      "dedup_agreement": round(agreement, 5), "dedup_agreement_sha1": round(agreement_sha1, 5),
                      "baseline_rows": nb, "peak_rss_mb": round(peak)}))


if __name__ == "__main__":
    main()
