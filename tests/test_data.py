import json

import pytest

from selbench.data import PoolError, load_pool, normalise_row
from selbench.protocol import PoolSpec


def test_formats_normalise_to_one_record():
    a = normalise_row({"instruction": "Add", "input": "1 and 2", "output": "3"}, "auto", "f:row 0")
    d = normalise_row({"instruction": "Add", "context": "1 and 2", "response": "3", "category": "x"}, "dolly", "f:row 1")
    s = normalise_row({"conversations": [{"from": "human", "value": "Add\n\n1 and 2"}, {"from": "gpt", "value": "3"}]},
                      "auto", "f:row 2")
    assert a.id == d.id == s.id  # same conversation, same ID, whatever the source format
    assert a.messages[0]["content"] == "Add\n\n1 and 2" and a.output == "3" and a.prompt == "Add\n\n1 and 2"


def test_sharegpt_multi_turn_and_trailing_user_turn():
    e = normalise_row({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                         {"from": "human", "value": "bye"}, {"from": "gpt", "value": "ciao"},
                                         {"from": "human", "value": "unanswered"}]}, "sharegpt", "f:row 0")
    assert [m["role"] for m in e.messages] == ["user", "assistant", "user", "assistant"]
    assert e.instruction == "hi" and e.output == "hello"


@pytest.mark.parametrize("row, msg", [
    ({"instruction": "x"}, "missing field 'output'"),
    ({"instruction": " ", "output": "y"}, "empty instruction"),
    ({"instruction": 3, "output": "y"}, "must be a string"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown role"),
    ({"conversations": [{"from": "human", "value": "x"}]}, "at least one user turn and one assistant"),
])
def test_bad_rows_name_file_and_row(row, msg):
    with pytest.raises(PoolError, match=msg) as e:
        normalise_row(row, "auto", "pool.json:row 7")
    assert "pool.json:row 7" in str(e.value)


def test_load_pool_errors_or_drops_bad_rows_and_reports_duplicates(tmp_path, caplog):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]
    rows += [{"instruction": "", "input": "", "output": "bad"}, rows[0]]
    f = tmp_path / "pool.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PoolError, match=r"pool.jsonl:row 5: empty instruction"):
        load_pool(PoolSpec(path=str(f)))
    pool = load_pool(PoolSpec(path=str(f), on_bad_rows="drop"))
    assert len(pool) == 5
    assert pool.report["dropped_bad_rows"] == 1 and pool.report["duplicates"] == 1
    assert "1 exact duplicate" in caplog.text


def test_pool_path_resolves_against_data_dir_and_samples_deterministically(data_dir):
    spec = PoolSpec(path="instruction_pools/dolly_subsets/alpagasus_dolly_3k.json", sample=50, sample_seed=3)
    p1, p2 = load_pool(spec, data_dir), load_pool(spec, data_dir)
    assert len(p1) == 50 and p1.ids == p2.ids and p1.hash == p2.hash
    assert p1.report["rows"] == 2996


def test_missing_pool_file_says_where_it_looked(tmp_path):
    with pytest.raises(PoolError, match="not found"):
        load_pool(PoolSpec(path="nope.json"), tmp_path)
