"""The local BBH tasks against lm-eval's own ``bbh_cot_fewshot`` definitions (installed with lm-eval), offline.

Same exemplars and description, same rendered prompts, same generation settings, answer filter and metric; the
answer extraction runs lm-eval's own filters and metric, configured from our YAML, on hand-written responses.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import lm_eval
import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from selbench import bbh
from selbench.lm_eval_runner import TASKS_DIR, local_task_names

UPSTREAM = Path(lm_eval.__file__).parent / "tasks" / "bbh" / "cot_fewshot"


@pytest.fixture(scope="module")
def manager():
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def _ours(manager, subtask):
    name = bbh.task_name(subtask)
    return manager.load([name])["tasks"][name]


def _upstream(subtask, rows):
    """lm-eval's hub task config with its dataset (hub ``SaylorTwift/bbh``) swapped for the shipped items."""
    cfg = load_yaml(UPSTREAM / f"{subtask}.yaml")
    cfg.pop("dataset_path")
    cfg.pop("dataset_name")
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
    return ConfigurableTask(config=cfg)


def test_all_27_subtasks_and_the_group_are_local_tasks(manager):
    assert len(bbh.SUBTASKS) == 27
    assert {p.stem for p in UPSTREAM.glob("*.yaml") if not p.stem.startswith("_")} == set(bbh.SUBTASKS)
    names = {bbh.task_name(s) for s in bbh.SUBTASKS}
    assert names | {bbh.GROUP} <= local_task_names()
    assert names | {bbh.GROUP} <= set(manager.all_tasks)
    upstream_group = load_yaml(UPSTREAM / "_bbh_cot_fewshot.yaml")
    ours_group = load_yaml(TASKS_DIR / f"{bbh.GROUP}.yaml")
    assert ours_group["task"] == [f"{n}_local" for n in upstream_group["task"]]
    assert ours_group["aggregate_metric_list"] == upstream_group["aggregate_metric_list"]


@pytest.mark.parametrize("subtask", bbh.SUBTASKS)
def test_exemplars_and_description_match_lm_eval(subtask, data_dir):
    upstream = load_yaml(UPSTREAM / f"{subtask}.yaml")
    text = (data_dir / "benchmarks" / "bbh" / "cot-prompts" / f"{subtask}.txt").read_text(encoding="utf-8")
    description, shots = bbh.parse_cot_prompt(text)
    assert description == upstream["description"]
    assert shots == upstream["fewshot_config"]["samples"]


@pytest.mark.parametrize("subtask", bbh.SUBTASKS)
def test_prompts_and_settings_match_lm_eval(subtask, manager):
    ours = _ours(manager, subtask)
    docs = list(ours.test_docs())
    up = _upstream(subtask, [{"input": d["input"], "target": d["target"]} for d in docs[:2]])
    for i, doc in enumerate(up.test_docs()):
        assert ours.fewshot_context(docs[i], 3) == up.fewshot_context(doc, 3)
        assert ours.doc_to_target(docs[i]) == up.doc_to_target(doc)
    for key in ("output_type", "generation_kwargs", "filter_list", "metric_list", "target_delimiter",
                "fewshot_delimiter", "num_fewshot"):
        assert getattr(ours.config, key) == getattr(up.config, key), key
    assert ours.config.metadata["version"] == up.config.metadata["version"]


def _extract_and_score(task, doc, response):
    """lm-eval's own filter pipeline (``get-answer``: regex + take_first) and exact_match, as configured."""
    (ensemble,) = task._filters
    assert ensemble.name == "get-answer"
    inst = Instance(request_type="generate_until", doc=doc, arguments=("", {}), idx=0)
    inst.resps.append(response)
    ensemble.apply([inst])
    answer = inst.filtered_resps["get-answer"]
    return answer, task.process_results(doc, [answer])["exact_match"]


@pytest.mark.parametrize("response, answer", [
    ("(A) is sarcastic because ... So the answer is (A).", "(A)"),
    ("not ( True ) = False. So the answer is False.", "False"),
    ("We need \"]\", \"}\", \"]\". So the answer is ] } ].", "] } ]"),
    ("the answer is (B).\nOn reflection the answer is (C).", "(B)"),  # first match wins
    ("The answer is (A).", "[invalid]"),  # the lookbehind is case-sensitive
    ("I think it is (A).", "[invalid]"),
    ("So the answer is 24", "2"),  # no closing period: the pattern's lookahead eats the last character
])
def test_answer_extraction(manager, response, answer):
    task = _ours(manager, "logical_deduction_three_objects")
    doc = {**next(iter(task.test_docs())), "target": "(A)"}
    got, score = _extract_and_score(task, doc, response)
    assert got == answer
    assert score == float(answer == "(A)")


def test_extracted_answer_scored_against_the_item_target(manager):
    task = _ours(manager, "boolean_expressions")
    doc = next(iter(task.test_docs()))
    assert doc["target"] in {"True", "False"}
    wrong = "False" if doc["target"] == "True" else "True"
    assert _extract_and_score(task, doc, f"... So the answer is {doc['target']}.") == (doc["target"], 1.0)
    assert _extract_and_score(task, doc, f"... So the answer is {wrong}.") == (wrong, 0.0)
    assert _extract_and_score(task, doc, f"So the answer is {doc['target'].lower()}.")[1] == 0.0  # case counts
