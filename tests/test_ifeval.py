"""IFEval through lm-eval's own scorer (``lm_eval.tasks.ifeval.utils``), offline.

The published check: Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models" (arXiv
2311.07911), Table 3 reports GPT-4 (the responses shipped as ``input_response_data_gpt4_20231107_145030.jsonl``):
prompt-level strict 76.89, instruction-level strict 83.57, prompt-level loose 79.30, instruction-level loose 85.37
(the same four figures are listed as the paper's results on paperswithcode.com, "instruction-following-evaluation-
for-large"). Over 541 prompts and 834 instructions these are 416, 697, 429 and 712 items.

lm-eval's scorer reproduces them to within one item each; it is not exact, for reasons docs/benchmarks.md gives:
two prompts (keys 1122, 1129) ask for a non-letter character ("#", "!") with ``keywords:letter_frequency``, for
which the checker draws a random letter (``random`` is seeded here so the test is deterministic; the strict counts
move by one item with the draw), and the loose counts land one item above the paper's for every draw.
"""

from __future__ import annotations

import random

import pytest

from selbench.cache import read_jsonl
from selbench.ifeval import ensure_punkt_tab, score_responses, scorer

PUBLISHED = {"prompt_level_strict_acc": 76.89, "inst_level_strict_acc": 83.57,
             "prompt_level_loose_acc": 79.30, "inst_level_loose_acc": 85.37}
N_PROMPTS, N_INSTRUCTIONS = 541, 834


def test_punkt_tab_is_found_offline():
    import nltk

    assert ensure_punkt_tab()
    assert nltk.word_tokenize("Mr. Smith went home. He SLEPT.") == ["Mr.", "Smith", "went", "home", ".", "He",
                                                                     "SLEPT", "."]


def test_gpt4_responses_reproduce_the_published_accuracies(data_dir):
    import langdetect

    folder = data_dir / "benchmarks" / "ifeval"
    docs = read_jsonl(folder / "input_data.jsonl")
    rows = read_jsonl(folder / "input_response_data_gpt4_20231107_145030.jsonl")
    assert len(docs) == len(rows) == N_PROMPTS
    assert sum(len(d["instruction_id_list"]) for d in docs) == N_INSTRUCTIONS
    # The responses were written for the prompts of 2023-11-07; since then one prompt (key 2785: "at least one
    # placeholder" -> "at least 3 placeholders") was reworded in input_data.jsonl. Both files list the prompts in the
    # same order, so responses are paired by position.
    changed = [d["key"] for d, r in zip(docs, rows) if d["prompt"] != r["prompt"]]
    assert changed == [2785]
    responses = {d["prompt"]: r["response"] for d, r in zip(docs, rows)}

    random.seed(0)
    langdetect.DetectorFactory.seed = 0
    got = score_responses(docs, responses)
    for metric, published in PUBLISHED.items():
        n = N_PROMPTS if metric.startswith("prompt") else N_INSTRUCTIONS
        published_count = round(published / 100 * n)
        assert published_count / n * 100 == pytest.approx(published, abs=0.005)  # the counts above
        assert abs(round(got[metric] * n) - published_count) <= 1, (metric, got[metric] * 100, published)


def _score(instruction_id, kwargs, prompt, response):
    doc = {"key": 1, "instruction_id_list": [instruction_id], "prompt": prompt, "kwargs": [kwargs]}
    r = scorer().process_results(doc, [response])
    return r["prompt_level_strict_acc"], r["prompt_level_loose_acc"]


@pytest.mark.parametrize("instruction_id, kwargs, response, strict, loose", [
    ("punctuation:no_comma", {}, "No commas here.", True, True),
    ("punctuation:no_comma", {}, "Sure, here it is:\nNo commas here.", False, True),  # loose drops line one
    ("punctuation:no_comma", {}, "One, two.\nThree, four.", False, False),
    ("change_case:english_lowercase", {}, "this answer is written in plain english and has no capitals at all.",
     True, True),
    ("change_case:english_lowercase", {}, "This answer starts with a capital letter, sadly.", False, False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", True, True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 3}, "*one* and *two*", False, False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "This is VERY, VERY loud.", True, True),  # nltk.word_tokenize: needs punkt_tab
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "It rained. We stayed in.", True, True),  # punkt sentence splitter
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "It rained. We stayed in. Then it stopped.", False, False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "Too short here.", False, False),
])
def test_scorer_on_fixtures(instruction_id, kwargs, response, strict, loose):
    assert _score(instruction_id, kwargs, "a prompt", response) == (strict, loose)


def test_instruction_level_aggregation_pools_instructions():
    doc = {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"],
           "kwargs": [{}, {}]}
    per_doc = [scorer().process_results(doc, [text]) for text in ("<<Title>> no commas", "a, b")]
    assert [r["prompt_level_strict_acc"] for r in per_doc] == [True, False]
    assert [r["inst_level_strict_acc"] for r in per_doc] == [[True, True], [False, False]]
    assert scorer().agg_inst_level_acc([r["inst_level_strict_acc"] for r in per_doc]) == 0.5
    assert score_responses([doc], {"p": "<<Title>> a, b"})["inst_level_strict_acc"] == 0.5


def test_local_task_matches_lm_eval_ifeval(data_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    from selbench.lm_eval_runner import TASKS_DIR

    task = TaskManager(include_path=str(TASKS_DIR), include_defaults=False).load(["ifeval_local"])["tasks"][
        "ifeval_local"]
    upstream = load_yaml(f"{lm_eval.__file__.rsplit('/', 1)[0]}/tasks/ifeval/ifeval.yaml", resolve_func=False)
    docs = list(task.test_docs())
    assert len(docs) == N_PROMPTS
    for key in ("output_type", "generation_kwargs", "num_fewshot", "doc_to_text", "doc_to_target"):
        assert getattr(task.config, key) == upstream[key], key
    assert [m["metric"] for m in task.config.metric_list] == [m["metric"] for m in upstream["metric_list"]]
    doc = docs[0]
    assert task.doc_to_text(doc) == doc["prompt"]
    response = "Raymond III was Count of Tripoli. *Early life* *Reign* *Legacy*"
    assert task.process_results(doc, [response]) == scorer().process_results(doc, [response])


def test_local_tasks_run_end_to_end_with_per_item_scores(tiny_model_dir, data_dir, tmp_path):
    """``ifeval_local`` and one BBH subtask through selbench's lm-eval evaluator on the tiny model (2 items each):
    metrics named like the others, and per-sample rows with ``item`` and ``scores``. An IFEval row's ``scores``
    hold the prompt-level accuracies; its instruction-level values are per-instruction lists (pooled over all
    instructions by the aggregate), kept in the row under their metric names."""
    from selbench.cache import ArtifactCache
    from selbench.evaluate import EvalContext, ModelUnderTest
    from selbench.lm_eval_runner import run_lm_eval

    model = ModelUnderTest(name="base", base_path=str(tiny_model_dir), adapter=None, identity="tiny")
    ctx = EvalContext(protocol=None, cache=ArtifactCache(tmp_path), data_dir=data_dir)
    spec = {"tasks": ["ifeval_local", "bbh_cot_fewshot_navigate_local"], "limit": 2, "max_gen_toks": 8,
            "batch_size": 2, "bootstrap_iters": 0}
    res = run_lm_eval(model, spec, ctx)
    assert {"ifeval_local/prompt_level_strict_acc", "ifeval_local/inst_level_loose_acc",
            "bbh_cot_fewshot_navigate_local/exact_match[get-answer]"} <= set(res.metrics)
    rows = {r["item"]: r for r in res.details}
    assert set(rows) == {"ifeval_local/0", "ifeval_local/1", "bbh_cot_fewshot_navigate_local/0",
                         "bbh_cot_fewshot_navigate_local/1"}
    assert set(rows["ifeval_local/0"]["scores"]) == {"ifeval_local/prompt_level_strict_acc",
                                                     "ifeval_local/prompt_level_loose_acc"}
    assert all(isinstance(v, bool) for v in rows["ifeval_local/0"]["inst_level_strict_acc"])
    assert rows["bbh_cot_fewshot_navigate_local/0"]["scores"].keys() == {
        "bbh_cot_fewshot_navigate_local/exact_match[get-answer]"}
    assert rows["bbh_cot_fewshot_navigate_local/0"]["target"] in {"Yes", "No"}
