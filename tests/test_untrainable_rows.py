"""Rows with an empty response stay in the pool, flagged: methods that score only the prompt rank them, nothing
selects or trains on them, and the selection says which rows were excluded and why (selbench.data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selbench.cache import ArtifactCache
from selbench.data import EMPTY_RESPONSE, Pool, load_pool, normalise_row
from selbench.protocol import PoolSpec
from selbench.registry import MethodSpec, get_method
from selbench.select import ContractError, Selection, SelectionContext, run_selection
import selbench.methods.dsir as dsir_mod
from selbench.signals import example_texts

SEEN: dict[str, list[str]] = {}


def _flagged_first(pool, budget, ctx):
    SEEN["flagged_first"] = [e.output for e in pool]
    order = sorted(pool, key=lambda e: (e.trainable, e.id))
    return Selection([e.id for e in order[:budget]])


def _reads_output(pool, budget, ctx):
    SEEN["reads_output"] = [e.output for e in pool]
    return [e.id for e in pool.examples[:budget]]


# not registered (the registry is global to the test session): specs as register_method builds them
FLAGGED_FIRST = MethodSpec("flagged_first", _flagged_first, "baseline", "reference", "ranks untrainable rows first",
                           "-", needs_output=False)
READS_OUTPUT = MethodSpec("reads_output", _reads_output, "baseline", "reference", "reads the response", "-")


def rows(n=12, empty=(2, 5, 9)):
    return [{"instruction": f"Write a poem about topic number {i} and cats", "input": "",
             "output": "" if i in empty else f"answer {i}"} for i in range(n)]


def make_pool(raw) -> Pool:
    return Pool([normalise_row(r, "alpaca", f"f:row {i}") for i, r in enumerate(raw)])


@pytest.fixture
def ctx(tmp_path):
    return SelectionContext(seed=0, cache=ArtifactCache(tmp_path / "cache"))


def test_empty_response_is_kept_flagged_not_an_error():
    e = normalise_row({"instruction": "Say hi", "input": "", "output": "  "}, "alpaca", "f:row 0")
    assert e.untrainable == EMPTY_RESPONSE and not e.trainable and e.output == "" and e.instruction == "Say hi"
    s = normalise_row({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                                         {"from": "human", "value": "c"}, {"from": "gpt", "value": " "}]},
                      "sharegpt", "f:row 1")
    assert s.untrainable == EMPTY_RESPONSE  # an empty later reply would be trained on too
    assert normalise_row({"instruction": "x", "output": "y"}, "alpaca", "f:row 2").trainable


def test_load_keeps_flagged_rows_and_samples_the_trainable_ones_as_before(tmp_path):
    raw = rows(60, empty=range(0, 60, 7))
    f, g = tmp_path / "with.jsonl", tmp_path / "without.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in raw))
    g.write_text("".join(json.dumps(r) + "\n" for r in raw if r["output"]))
    full = load_pool(PoolSpec(path=str(f)))  # on_bad_rows: error, and still no error
    assert len(full) == 60 and full.n_trainable == 51 and full.report["untrainable"] == 9
    assert set(full.untrainable.values()) == {EMPTY_RESPONSE}
    assert full.trainable().ids == load_pool(PoolSpec(path=str(g))).ids
    a = load_pool(PoolSpec(path=str(f), sample=20, sample_seed=4))
    b = load_pool(PoolSpec(path=str(g), sample=20, sample_seed=4))
    assert a.trainable().ids == b.ids  # the trainable sample does not depend on the flagged rows
    assert a.n_trainable == 20 and len(a.untrainable) == round(9 * 20 / 51)
    assert [int(e.source.rsplit("row ", 1)[1]) for e in a] == sorted(int(e.source.rsplit("row ", 1)[1]) for e in a)


def test_method_that_reads_the_output_never_sees_flagged_rows(ctx):
    pool = make_pool(rows())
    sel, _ = run_selection(READS_OUTPUT, pool, 5, ctx)
    assert "" not in SEEN["reads_output"] and len(SEEN["reads_output"]) == 9
    assert sel.ids == pool.trainable().ids[:5]
    ex = sel.extras["untrainable"]
    assert ex["rows"] == pool.untrainable and ex["shown_to_method"] is False and ex["skipped_picks"] == []
    assert any("not shown to the method" in n for n in sel.notes)


def test_prompt_only_method_ranks_flagged_rows_the_harness_skips_them(ctx):
    pool = make_pool(rows())
    sel, _ = run_selection(FLAGGED_FIRST, pool, 4, ctx)
    assert SEEN["flagged_first"].count("") == 3  # it saw (and ranked first) all three
    assert len(sel.ids) == 4 and all(pool[i].trainable for i in sel.ids)
    ex = sel.extras["untrainable"]
    assert ex["shown_to_method"] is True and sorted(ex["skipped_picks"]) == sorted(pool.untrainable)
    assert sel.ids == sorted(i for i in pool.ids if pool[i].trainable)[:4]
    assert len(sel.training_examples(pool)) == 4
    with pytest.raises(ContractError, match="untrainable"):
        Selection([pool.ids[2]]).training_examples(pool)


def test_dsir_on_prompts_ranks_flagged_rows_and_selects_its_top_trainable(ctx, tmp_path):
    raw = rows(40, empty=(1, 4, 6, 30))
    raw[4]["instruction"] = "Write a poem about cats and dogs"  # close to the target: ranked high
    raw[6]["instruction"] = "Write a poem about cats and dogs, cats and dogs"
    pool = make_pool(raw)
    target = tmp_path / "target.jsonl"
    target.write_text('{"text": "a poem about cats"}\n{"text": "cats and dogs"}\n')
    params = {"target_files": [str(target)], "top_k": True}
    sel, _ = run_selection(get_method("dsir"), pool, 10, ctx, params)
    assert set(sel.scores) == set(pool.ids)  # every row ranked, flagged ones included
    targets = ["a poem about cats", "cats and dogs"]
    logw, _ = dsir_mod.dsir_log_weights(example_texts(pool, "instruction+input"), targets)
    order = np.lexsort((np.arange(len(logw)), -logw))
    want = [pool.ids[i] for i in order if pool.examples[i].trainable][:10]
    assert sel.ids == want
    assert set(sel.extras["untrainable"]["skipped_picks"]) >= {pool.ids[4], pool.ids[6]}
    # the point of keeping them: dropping the flagged rows changes the raw distribution, hence every weight
    dropped, _ = dsir_mod.dsir_log_weights(example_texts(pool.trainable(), "instruction+input"), targets)
    keep = [i for i, e in enumerate(pool) if e.trainable]
    assert np.abs(dropped - logw[keep]).max() > 1e-3
    # with the output among its fields DSIR reads responses: the flagged rows are not shown to it
    sel2, _ = run_selection(get_method("dsir"), pool, 10, ctx, {**params, "fields": "instruction+input+output"})
    assert not set(sel2.scores) & set(pool.untrainable) and sel2.extras["untrainable"]["shown_to_method"] is False


def test_pool_without_flagged_rows_is_unchanged(ctx):
    pool = make_pool(rows(empty=()))
    assert pool.trainable() is pool and pool.n_trainable == len(pool)
    sel, _ = run_selection(FLAGGED_FIRST, pool, 3, ctx)
    assert "untrainable" not in sel.extras and sel.notes == []
