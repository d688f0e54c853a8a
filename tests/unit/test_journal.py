"""The run's request journal (`builder.journal`): appends readable at once and by a fresh Journal, cut-short lines
skipped, segments of several writers merged, and compaction that drops exactly what the shards hold while what the
run spent survives: lines of the wrong shape skipped by name, a damaged spent.json a BuilderError, a compaction killed
at any step counting nothing twice, and a stale writer whose segment was compacted away losing nothing."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder import journal as journal_module
from builder.cost import Usage
from builder.errors import BuilderError
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


# ---------------------------------------------------------------- hand-edited or damaged journals
WRONG_LINES = {
    "no samples": {"key": "k1", "qid": "x"},
    "samples null": {"key": "k1", "qid": "x", "samples": None, "usage": {}, "response": {}},
    "samples of strings": {"key": "k1", "qid": "x", "samples": ["0"], "usage": {}, "response": {}},
    "samples of booleans": {"key": "k1", "qid": "x", "samples": [True], "usage": {}, "response": {}},
    "a sample index past Int32": {"key": "k1", "qid": "x", "samples": [2**40], "usage": {}, "response": {}},
    "a negative sample index": {"key": "k1", "qid": "x", "samples": [-1], "usage": {}, "response": {}},
    "cost a string": {"key": "k1", "qid": "x", "samples": [99], "usage": {"cost_usd": "0.5"}, "response": {}},
    "tokens a string": {"key": "k1", "qid": "x", "samples": [99], "usage": {"prompt_tokens": "9"}, "response": {}},
    "requests null": {"key": "k1", "qid": "x", "samples": [99], "usage": {"requests": None}, "response": {}},
    "a negative cost": {"key": "k1", "qid": "x", "samples": [99], "usage": {"cost_usd": -5.0}, "response": {}},
    "usage a list": {"key": "k1", "qid": "x", "samples": [99], "usage": [1], "response": {}},
    "no response": {"key": "k1", "qid": "x", "samples": [99], "usage": {}},
    "response a string": {"key": "k1", "qid": "x", "samples": [99], "usage": {}, "response": "7"},
    "key a number": {"key": 1, "qid": "x", "samples": [99], "usage": {}, "response": {}},
    "qid missing": {"key": "k1", "samples": [99], "usage": {}, "response": {}},
    "no object": [1, 2],
}


@pytest.mark.parametrize("wrong", list(WRONG_LINES.values()) + ['{"key":"k1","qid":"x","samples":[0],"usage":'
                                                                 '{"cost_usd":NaN},"response":{}}'],
                         ids=[*WRONG_LINES, "a NaN cost"])
def test_a_line_of_the_wrong_shape_is_skipped_by_file_and_line(tmp_path, caplog, wrong):
    """A hand edit or a damaged disk: every reader skips the line and says where it is; nothing crashes."""
    good = [entry("a", [0]), entry("b", [0, 1])]
    seg = tmp_path / "host-1-aaaa.jsonl"
    raw = wrong if isinstance(wrong, str) else json.dumps(wrong)
    seg.write_text(json.dumps(good[0]) + "\n" + raw + "\n" + json.dumps(good[1]) + "\n")
    with caplog.at_level(logging.INFO, logger="builder.journal"):
        j = Journal(tmp_path)
        assert j.entries() == {e["key"]: e for e in good}
        assert j.get("k1") is None
        assert totals(j.spent()) == totals(Usage(2, 200, 50, 100, 0.002))
    assert f"{seg}:2: a journal line that is no entry is skipped" in caplog.text
    # compaction reads past it too, drops what the shards hold and takes the wrong line away with its segment
    assert Journal(tmp_path).compact(done(("a", 0), ("x", 0), ("x", 99))) == 1
    assert Journal(tmp_path).entries() == {good[1]["key"]: good[1]}
    assert totals(Journal(tmp_path).spent()) == totals(Usage(2, 200, 50, 100, 0.002))
    assert b"k1" not in b"".join(p.read_bytes() for p in segments(tmp_path))


def test_an_entry_without_usage_costs_nothing_and_one_without_samples_is_kept(tmp_path):
    no_usage = {"key": "nu", "qid": "a", "samples": [0], "response": {}}
    null_usage = {"key": "nl", "qid": "b", "samples": [0], "usage": None, "response": {}}
    no_samples = {**entry("c", []), "key": "ns"}
    j = Journal(tmp_path)
    for e in (no_usage, null_usage, no_samples):
        j.append(e)
    j.close()
    assert set(Journal(tmp_path).entries()) == {"nu", "nl", "ns"}
    assert totals(Journal(tmp_path).spent()) == totals(Usage(1, 100, 25, 50, 0.001))
    # the two with samples in shards leave; the one with none has nothing a shard could hold: kept, not a crash
    assert Journal(tmp_path).compact(done(("a", 0), ("b", 0), ("c", 0))) == 2
    assert set(Journal(tmp_path).entries()) == {"ns"}
    assert totals(Journal(tmp_path).spent()) == totals(Usage(1, 100, 25, 50, 0.001))
    # and alone: an empty sample table
    only = tmp_path / "only"
    Journal(only).append(no_samples)
    assert Journal(only).compact(done(("c", 0))) == 0
    assert set(Journal(only).entries()) == {"ns"}


DAMAGED_SPENT = {
    "empty": ("", "empty"),
    "blank": ("  \n", "empty"),
    "cut short": ('{"requests": 3, "prompt_t', "cut short"),
    "garbage": ("\x00\x00\x00\x00", "not JSON"),
    "not utf-8": (b"\xff\xfe{}", "not JSON"),
    "a list": ("[1, 2]", "not a JSON object"),
    "requests a string": ('{"requests": "3"}', '`requests` is "3", not a count'),
    "cost a string": ('{"requests": 3, "cost_usd": "0.5"}', "`cost_usd`"),
    "tokens null": ('{"prompt_tokens": null}', "`prompt_tokens`"),
    "a negative cost": ('{"cost_usd": -1}', "`cost_usd`"),
    "a NaN cost": ('{"cost_usd": NaN}', "`cost_usd`"),
    "an unknown text field": ('{"requests": 3, "note": "x"}', "`note`"),
    "replaced a list": ('{"requests": 3, "replaced": ["a.jsonl"]}', "`replaced`"),
    "replaced offsets text": ('{"requests": 3, "replaced": {"a.jsonl": "9"}}', "`replaced`"),
}


@pytest.mark.parametrize("text,what", list(DAMAGED_SPENT.values()), ids=list(DAMAGED_SPENT))
def test_a_damaged_spent_json_is_a_builder_error_and_never_reset(tmp_path, text, what):
    j = Journal(tmp_path)
    j.append(entry("a", [0]))
    j.close()
    spent = tmp_path / SPENT
    spent.write_bytes(text if isinstance(text, bytes) else text.encode())
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for call in (lambda: Journal(tmp_path).spent(), lambda: Journal(tmp_path).entries(),
                 lambda: Journal(tmp_path).get(entry("a", [0])["key"]),
                 lambda: Journal(tmp_path).compact(done(("a", 0)))):
        with pytest.raises(BuilderError) as err:
            call()
        assert str(spent) in str(err.value) and what in str(err.value)
        assert "delete it" in str(err.value) and "restore it" in str(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files  # nothing changed, nothing reset


def test_a_spent_json_of_an_older_version_still_reads(tmp_path):
    """Totals only (no `replaced`), a null cost (no price known), integral floats: all read as before."""
    (tmp_path / SPENT).write_text('{"requests": 3, "prompt_tokens": 300, "cached_tokens": 0, '
                                  '"completion_tokens": 30.0, "cost_usd": null}')
    j = Journal(tmp_path)
    j.append(entry("a", [0], cost=None))
    j.close()
    assert totals(Journal(tmp_path).spent()) == totals(Usage(4, 400, 25, 80, None))
    assert Journal(tmp_path).compact(done(("a", 0))) == 1
    assert totals(Journal(tmp_path).spent()) == totals(Usage(4, 400, 25, 80, None))


def test_spent_json_is_fsynced_before_its_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def traced_fsync(fd: int) -> None:
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        fsync(fd)

    def traced_replace(src: Any, dst: Any) -> None:
        events.append(("replace", Path(src).name))
        replace(src, dst)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc/self/fd to name a descriptor's file")
    j = Journal(tmp_path)
    j.append(entry("a", [0]))
    monkeypatch.setattr(journal_module.os, "fsync", traced_fsync)
    monkeypatch.setattr(journal_module.os, "replace", traced_replace)
    assert j.compact(done(("a", 0))) == 1
    (tmp,) = {name for kind, name in events if kind == "replace" and name.startswith(f".{SPENT}.")}
    assert events.index(("fsync", tmp)) < events.index(("replace", tmp))


# ---------------------------------------------------------------- a compaction killed part way
class Killed(BaseException):
    """SIGKILL, as far as the code under test can tell: nothing after it runs."""


def kill_before_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept entries' segment is in place, spent.json not yet replaced."""
    replace = os.replace

    def killed(src: Any, dst: Any) -> None:
        if Path(dst).name == SPENT:
            raise Killed
        replace(src, dst)

    monkeypatch.setattr(journal_module.os, "replace", killed)


def kill_before_unlink(monkeypatch: pytest.MonkeyPatch) -> None:
    """spent.json replaced, the old segments not yet removed (one of two removed, or none)."""
    unlink = Path.unlink
    removed: list[Path] = []

    def killed(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.suffix == ".jsonl" and removed:
            raise Killed
        removed.append(self)
        unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", killed)


def kill_before_any_unlink(monkeypatch: pytest.MonkeyPatch) -> None:
    unlink = Path.unlink

    def killed(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.suffix == ".jsonl":
            raise Killed
        unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", killed)


@pytest.mark.parametrize("kill", [kill_before_spent, kill_before_any_unlink, kill_before_unlink],
                         ids=["before-spent.json", "before-any-unlink", "between-unlinks"])
def test_a_compaction_killed_at_any_step_counts_nothing_twice(tmp_path, monkeypatch, kill):
    """Whatever step a kill interrupts, spent is the true total at once and after every later compaction, and the
    entries no shard holds are all still there."""
    w1, w2 = Journal(tmp_path), Journal(tmp_path)
    folded = [entry(f"f{i}", [0], cost=1.0) for i in range(4)]
    kept = [entry(f"k{i}", [0, 1], cost=0.5) for i in range(3)]
    for i, e in enumerate(folded + kept):
        (w1 if i % 2 else w2).append(e)
    w1.close()
    w2.close()
    assert len(segments(tmp_path)) == 2
    true = Usage(7, 700, 175, 350, 5.5)
    shards = done(*[(f"f{i}", 0) for i in range(4)], ("k0", 0))

    with monkeypatch.context() as m:
        kill(m)
        with pytest.raises(Killed):
            Journal(tmp_path).compact(shards)
    assert totals(Journal(tmp_path).spent()) == totals(true)
    keys = {e["key"] for e in kept}
    assert keys <= set(Journal(tmp_path).entries())

    # the run goes on: a writer appends, then the next run compacts with the same shards, and another with more
    late = entry("late", [0], cost=0.25)
    w3 = Journal(tmp_path)
    w3.append(late)
    w3.close()
    true.add(Usage.from_json(late["usage"]))
    assert totals(Journal(tmp_path).spent()) == totals(true)
    before = set(Journal(tmp_path).entries())
    dropped = Journal(tmp_path).compact(shards)
    assert dropped == (4 if kill is kill_before_spent else 0)  # folded once, whichever compaction did it
    assert set(Journal(tmp_path).entries()) == keys | {late["key"]}
    assert totals(Journal(tmp_path).spent()) == totals(true)
    assert len(segments(tmp_path)) == 1 and before >= keys | {late["key"]}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert Journal(tmp_path).compact(done(*[(f"k{i}", s) for i in range(3) for s in (0, 1)], ("late", 0))) == 4
    assert Journal(tmp_path).entries() == {} and segments(tmp_path) == []
    assert totals(Journal(tmp_path).spent()) == totals(true)
    # what spent.json remembers of the segments it replaced stays bounded: only those its own compaction read
    assert len(json.loads((tmp_path / SPENT).read_text())["replaced"]) == 1


def test_a_request_journaled_again_after_its_entry_was_folded_is_counted_again(tmp_path):
    """Spent counts every answer the run paid for: a request sent again (its samples left the shards) is paid again,
    even with the key of an entry a compaction folded."""
    e = entry("a", [0], cost=1.0)
    Journal(tmp_path).append(e)
    assert Journal(tmp_path).compact(done(("a", 0))) == 1
    Journal(tmp_path).append(e)
    assert totals(Journal(tmp_path).spent()) == totals(Usage(2, 200, 50, 100, 2.0))
    assert Journal(tmp_path).compact(done(("a", 0))) == 1
    assert totals(Journal(tmp_path).spent()) == totals(Usage(2, 200, 50, 100, 2.0))


# ---------------------------------------------------------------- a stale writer and the compaction of another driver
def test_a_stale_writer_whose_segment_was_compacted_away_moves_to_a_new_one(tmp_path, caplog):
    """Driver A's lease went stale; B compacted, removing A's open segment; A's answers land after that."""
    a = Journal(tmp_path)
    first = entry("q0", [0], cost=0.5)
    a.append(first)  # in a shard already
    assert Journal(tmp_path).compact(done(("q0", 0))) == 1  # B took over
    assert segments(tmp_path) == []
    late = [entry("q1", [0], cost=0.5), entry("q2", [0], cost=0.5)]
    with caplog.at_level(logging.WARNING, logger="builder.journal"):
        for e in late:
            a.append(e)
    assert "compacted away while this process still wrote to it" in caplog.text
    assert len(segments(tmp_path)) == 1  # each line in the new segment, the one A writes to from now on
    fresh = Journal(tmp_path)
    assert fresh.entries() == {e["key"]: e for e in late}
    assert totals(fresh.spent()) == totals(Usage(3, 300, 75, 150, 1.5))
    a.close()
    assert Journal(tmp_path).entries() == {e["key"]: e for e in late}


@pytest.mark.parametrize("then", ["append", "close"])
def test_lines_a_stale_writer_wrote_while_the_compaction_ran_are_moved_too(tmp_path, monkeypatch, then):
    """A's line lands after B read A's segment and before B removed it: A's next append (or its close) copies every
    line past what B read to its new segment."""
    a = Journal(tmp_path)
    first, racing, after = entry("q0", [0], cost=0.5), entry("q1", [0], cost=0.25), entry("q2", [0], cost=0.125)
    a.append(first)
    unlink = Path.unlink

    def racing_unlink(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.suffix == ".jsonl" and racing["key"] not in a.entries():
            a.append(racing)  # A still sees its segment linked: the line goes there
        unlink(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", racing_unlink)
        assert Journal(tmp_path).compact(done(("q0", 0))) == 1
    assert segments(tmp_path) == []  # the racing line went with the removed segment
    if then == "append":
        a.append(after)
        a.close()
        want = [racing, after]
    else:
        a.close()
        want = [racing]
    fresh = Journal(tmp_path)
    assert fresh.entries() == {e["key"]: e for e in want}
    spent = Usage(1, 100, 25, 50, 0.5)
    for e in want:
        spent.add(Usage.from_json(e["usage"]))
    assert totals(fresh.spent()) == totals(spent)


def test_a_writer_whose_segment_was_removed_otherwise_goes_on_in_a_new_one(tmp_path, caplog):
    """No compaction took the segment (removed by hand): nothing is known to be counted, the writer goes on."""
    a = Journal(tmp_path)
    a.append(entry("q0", [0]))
    (seg,) = segments(tmp_path)
    seg.unlink()
    later = entry("q1", [0])
    with caplog.at_level(logging.WARNING, logger="builder.journal"):
        a.append(later)
    a.close()
    assert "removed by something other than a compaction" in caplog.text
    assert Journal(tmp_path).entries() == {later["key"]: later}  # the line written after the removal, no other


def test_a_last_line_without_its_newline_is_taken_once(tmp_path, monkeypatch):
    """A hand-edited segment whose last entry lacks its newline: a compaction killed before removing it leaves the
    entry counted once (in spent.json), not again from the segment."""
    e = entry("a", [0], cost=1.0)
    (tmp_path / "host-1-aaaa.jsonl").write_text(json.dumps(e))  # no newline
    assert Journal(tmp_path).entries() == {e["key"]: e}
    with monkeypatch.context() as m:
        kill_before_any_unlink(m)
        with pytest.raises(Killed):
            Journal(tmp_path).compact(done(("a", 0)))
    assert Journal(tmp_path).entries() == {}
    assert totals(Journal(tmp_path).spent()) == totals(Usage(1, 100, 25, 50, 1.0))
    assert Journal(tmp_path).compact(done(("a", 0))) == 0
    assert segments(tmp_path) == [] and totals(Journal(tmp_path).spent()) == totals(Usage(1, 100, 25, 50, 1.0))
