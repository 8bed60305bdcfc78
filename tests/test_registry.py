import math
import subprocess
import sys
import textwrap

import pytest

from selbench import registry
from selbench.cache import ArtifactCache
from selbench.data import Pool, normalise_row
from selbench.select import ContractError, Selection, SelectionContext, check_contract, run_selection


@pytest.fixture
def pool():
    return Pool([normalise_row({"instruction": f"q{i}", "output": f"answer {'x ' * i}"}, "alpaca", f"t:{i}")
                 for i in range(20)])


def test_builtin_methods_are_registered_with_category_and_citation():
    specs = registry.load_all()
    for name in ("random", "full", "longest"):
        assert specs[name].citation and specs[name].family in registry.FAMILIES
    assert specs["full"].full_pool


def test_plugin_file_registers_a_method_and_runs(tmp_path, pool):
    plugin = tmp_path / "plugin_every_other.py"
    plugin.write_text(textwrap.dedent('''
        from selbench.registry import register_method

        @register_method("every_other", family="small-model", aspect="diversity",
                         description="Every second example.", citation="none")
        def every_other(pool, budget, ctx, stride=2):
            return pool.ids[::stride][:budget]
    '''))
    registry.load_plugin_file(plugin)
    spec = registry.get_method("every_other")
    sel, wall = run_selection(spec, pool, 5, SelectionContext(seed=0, cache=ArtifactCache(tmp_path)))
    assert sel.ids == pool.ids[::2][:5] and wall >= 0


def test_broken_plugin_and_unknown_method_give_clear_errors(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import not_a_module_anywhere\n")
    with pytest.raises(registry.RegistryError, match="broken.py failed to import"):
        registry.load_plugin_file(bad)
    with pytest.raises(registry.RegistryError, match="unknown selection method 'nope'"):
        registry.get_method("nope")
    with pytest.raises(registry.RegistryError, match="family"):
        registry.register_method("x", family="magic", aspect="quality", description="", citation="")


def test_cli_lists_methods_and_plugins(tmp_path):
    plugin = tmp_path / "p.py"
    plugin.write_text("from selbench.registry import register_method\n"
                      "@register_method('cli_plugin_m', family='baseline', aspect='reference', description='d', "
                      "citation='c')\ndef f(pool, budget, ctx):\n    return pool.ids[:budget]\n")
    out = subprocess.run([sys.executable, "-m", "selbench", "methods", "--plugin", str(plugin)],
                         capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""}, check=True).stdout
    for name in ("random", "full", "longest", "cli_plugin_m", "baseline / reference"):
        assert name in out


@pytest.mark.parametrize("out, rule", [
    (lambda p: p.ids[:4], "returned 4 IDs, the budget is exactly 5"),
    (lambda p: p.ids[:4] + p.ids[:1], "duplicate IDs"),
    (lambda p: p.ids[:4] + ["not-an-id"], "not in the pool"),
    (lambda p: Selection(p.ids[:5], scores={p.ids[0]: math.nan}), "not a finite number"),
    (lambda p: Selection(p.ids[:5], scores={"zzz": 1.0}), "unknown ID"),
    (lambda p: [1, 2, 3, 4, 5], "must be a string"),
])
def test_contract_violations_name_method_and_rule(pool, out, rule):
    with pytest.raises(ContractError) as e:
        check_contract("my_method", out(pool), pool, 5)
    assert "my_method" in str(e.value) and rule in str(e.value)


def test_random_is_seeded_and_longest_prefers_long_responses(tmp_path, pool, smollm_tokenizer_dir):
    from selbench.models import BaseModelHandle, ResolvedModel

    ctx = lambda s: SelectionContext(seed=s, cache=ArtifactCache(tmp_path),  # noqa: E731
                                     base_model=BaseModelHandle(ResolvedModel(str(smollm_tokenizer_dir), "t", "t")))
    rnd = registry.get_method("random")
    assert run_selection(rnd, pool, 5, ctx(1))[0].ids == run_selection(rnd, pool, 5, ctx(1))[0].ids
    assert run_selection(rnd, pool, 5, ctx(1))[0].ids != run_selection(rnd, pool, 5, ctx(2))[0].ids
    sel, _ = run_selection(registry.get_method("longest"), pool, 5, ctx(0))
    assert sel.ids == pool.ids[::-1][:5]


def test_method_parameters_come_from_the_signature_and_are_validated():
    spec = registry.get_method("ifd")
    assert spec.defaults == {"template": "chat", "threshold": 1.0, "variant": "chat"}
    registry.validate_params(spec, {"threshold": 1, "template": "none"})  # an int is fine for a float
    with pytest.raises(registry.RegistryError, match="'ifd' has no parameter 'treshold'"):
        registry.validate_params(spec, {"treshold": 0.9}, "board.yaml: methods[3]")
    with pytest.raises(registry.RegistryError, match="parameter 'threshold' must be float"):
        registry.validate_params(spec, {"threshold": "high"})
    with pytest.raises(registry.RegistryError, match="parameter 'k' must be int"):
        registry.validate_params(registry.get_method("prompt_uncertainty"), {"k": True})
