"""The run's request journal (`builder.journal`): appends readable at once and by a fresh Journal, cut-short lines
skipped, segments of several writers merged, and compaction that drops exactly what the shards hold while what the
run spent survives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.cost import Usage
from builder.journal import SPENT, Journal, request_key


def entry(qid: str, samples: list[int], *, tag: str = "", prompt: int = 100, completion: int = 50,
          cost: float | None = 0.001) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": f"{qid}{tag}"}], "n": len(samples),
            "seed": samples[0] if samples else 0}
    usage = Usage(1, prompt, prompt // 4, completion, cost)
    return {"key": request_key("/v1/chat/completions", body), "qid": qid, "samples": samples,
            "usage": usage.to_json(), "response": {"choices": [{"message": {"content": f"answer to {qid}{tag}"}}]}}


def done(*pairs: tuple[str, int]) -> pl.DataFrame:
    return pl.DataFrame({"qid": [q for q, _ in pairs], "sample_idx": [s for _, s in pairs]},
                        schema={"qid": pl.String, "sample_idx": pl.Int64})


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def totals(u: Usage) -> tuple[int, int, int, int, Any]:
    return (u.requests, u.prompt_tokens, u.cached_tokens, u.completion_tokens,
            None if u.cost_usd is None else pytest.approx(u.cost_usd, abs=1e-9))


def test_request_key_is_the_endpoint_and_body_in_any_key_order():
    a = request_key("/v1/chat/completions", {"model": "m", "seed": 1, "messages": [{"role": "user", "content": "x"}]})
    b = request_key("/v1/chat/completions", {"messages": [{"content": "x", "role": "user"}], "seed": 1, "model": "m"})
    assert a == b
    assert a != request_key("/v1/completions", {"model": "m", "seed": 1, "messages": [{"role": "user",
                                                                                     "content": "x"}]})
    assert a != request_key("/v1/chat/completions", {"model": "m", "seed": 2, "messages": [{"role": "user",
                                                                                          "content": "x"}]})


def test_appended_entries_are_read_back_by_a_fresh_journal(tmp_path):
    folder = tmp_path / "journal"
    j = Journal(folder)
    written = [entry(f"q{i}", [0, 1]) for i in range(5)] + [entry("ü-名", [3], tag="unicode ✓")]
    for e in written:
        j.append(e)
    assert j.get(written[2]["key"]) == written[2] and j.hits == 1
    j.close()
    fresh = Journal(folder)
    assert fresh.entries() == {e["key"]: e for e in written}
    assert fresh.get(written[-1]["key"]) == written[-1]
    assert fresh.get("no such key") is None and fresh.hits == 1
    assert len(segments(folder)) == 1


def test_an_append_is_flushed_at_once(tmp_path):
    """Another Journal (another process after a SIGKILL) reads every appended line before the writer closes."""
    j = Journal(tmp_path)
    written = [entry(f"q{i}", [0]) for i in range(3)]  # several within a second: not every one is fsynced
    for n, e in enumerate(written, 1):
        j.append(e)
        assert Journal(tmp_path).entries() == {x["key"]: x for x in written[:n]}
    j.close()


def test_a_torn_last_line_is_skipped(tmp_path):
    j = Journal(tmp_path)
    kept = [entry("q1", [0]), entry("q2", [0, 1])]
    for e in kept:
        j.append(e)
    j.close()
    (seg,) = segments(tmp_path)
    torn = entry("q3", [0], tag="é" * 40)
    line = json.dumps(torn, ensure_ascii=False, separators=(",", ":")).encode()
    with seg.open("ab") as f:
        f.write(line[: len(line) // 2])  # killed mid-write: no newline, maybe mid-character
    fresh = Journal(tmp_path)
    assert fresh.entries() == {e["key"]: e for e in kept}
    assert fresh.get(torn["key"]) is None
    assert totals(fresh.spent()) == totals(Usage(2, 200, 50, 100, 0.002))
    # and the next writer's lines (its own segment) are read as well
    more = entry("q4", [0])
    fresh.append(more)
    fresh.close()
    assert set(Journal(tmp_path).entries()) == {e["key"] for e in [*kept, more]}


def test_a_torn_line_cut_inside_a_multibyte_character_is_skipped(tmp_path):
    e = entry("q1", [0])
    line = json.dumps(entry("q2", [0], tag="名名名"), ensure_ascii=False).encode()
    cut = line.index("名".encode()) + 1  # inside the 3-byte character
    (tmp_path / "host-1-aaaa.jsonl").write_bytes(json.dumps(e).encode() + b"\n" + line[:cut])
    assert Journal(tmp_path).entries() == {e["key"]: e}


def test_the_segments_of_several_writers_merge(tmp_path):
    a, b = Journal(tmp_path), Journal(tmp_path)
    from_a = [entry(f"a{i}", [0]) for i in range(3)]
    from_b = [entry(f"b{i}", [0, 1]) for i in range(4)]
    for x, y in zip(from_a, from_b, strict=False):
        a.append(x)
        b.append(y)
    b.append(from_b[-1])
    a.close()
    b.close()
    assert len(segments(tmp_path)) == 2
    merged = Journal(tmp_path)
    assert merged.entries() == {e["key"]: e for e in [*from_a, *from_b]}
    assert totals(merged.spent()) == totals(Usage(7, 700, 175, 350, 0.007))


def test_compaction_drops_exactly_what_the_shards_hold_and_spent_survives(tmp_path):
    w1, w2 = Journal(tmp_path), Journal(tmp_path)
    all_done = entry("a", [0, 1], prompt=101, completion=11, cost=0.0011)
    partly = entry("b", [0, 1], prompt=102, completion=12, cost=0.0012)  # only (b, 0) is in a shard
    other_sample = entry("a", [2], prompt=103, completion=13, cost=0.0013)  # (a, 2) is in no shard
    single = entry("c", [0], prompt=104, completion=14, cost=None)  # no price known
    second_writer = entry("d", [3], prompt=105, completion=15, cost=0.0015)
    none_done = entry("e", [0], prompt=106, completion=16, cost=0.0016)
    for e in (all_done, partly, other_sample, single):
        w1.append(e)
    for e in (second_writer, none_done):
        w2.append(e)
    w2.close()  # w1 stays open: compact closes it
    before = totals(Journal(tmp_path).spent())
    assert before == totals(Usage(6, 621, 153, 81, 0.0067))
    shards = done(("a", 0), ("a", 1), ("b", 0), ("c", 0), ("d", 3), ("d", 3), ("z", 9))

    assert w1.compact(shards) == 3
    kept = {e["key"]: e for e in (partly, other_sample, none_done)}
    assert w1.entries() == kept
    assert totals(w1.spent()) == before
    fresh = Journal(tmp_path)
    assert fresh.entries() == kept
    assert totals(fresh.spent()) == before
    spent_file = Usage.from_json(json.loads((tmp_path / SPENT).read_text()))
    assert totals(spent_file) == totals(Usage(3, 310, 77, 40, 0.0026))  # the dropped three, folded
    assert len(segments(tmp_path)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left

    # a second compaction with the same shards is a no-op
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert Journal(tmp_path).compact(shards) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    assert totals(Journal(tmp_path).spent()) == before

    # the run goes on: a new entry, then the shards hold everything: the journal empties, spent keeps it all
    late = entry("f", [0], prompt=107, completion=17, cost=0.0017)
    fresh.append(late)
    fresh.close()
    everything = done(("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("e", 0), ("f", 0))
    assert Journal(tmp_path).compact(everything) == 4
    final = Journal(tmp_path)
    assert final.entries() == {} and segments(tmp_path) == []
    assert totals(final.spent()) == totals(Usage(7, 728, 179, 98, 0.0084))


def test_compaction_with_nothing_to_drop_or_no_journal(tmp_path):
    assert Journal(tmp_path / "none").compact(done(("a", 0))) == 0
    j = Journal(tmp_path)
    e = entry("a", [0, 1])
    j.append(e)
    assert j.compact(done(("b", 0), ("a", 1))) == 0
    assert Journal(tmp_path).entries() == {e["key"]: e}
    assert not (tmp_path / SPENT).exists()
    assert totals(Journal(tmp_path).spent()) == totals(Usage(1, 100, 25, 50, 0.001))


def test_compaction_skips_a_torn_line_and_keeps_the_rest(tmp_path):
    j = Journal(tmp_path)
    a, b = entry("a", [0]), entry("b", [0])
    j.append(a)
    j.append(b)
    j.close()
    (seg,) = segments(tmp_path)
    with seg.open("ab") as f:
        f.write(b'{"key":"cut","qid":"c","sam')
    assert Journal(tmp_path).compact(done(("a", 0))) == 1
    assert Journal(tmp_path).entries() == {b["key"]: b}
    assert b"cut" not in b"".join(p.read_bytes() for p in segments(tmp_path))
