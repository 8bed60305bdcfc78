"""InsTag: Lu et al. 2023, "#InsTag: Instruction Tagging for Analyzing Supervised Fine-tuning of Large Language
Models" (ICLR 2024, arXiv 2308.07074).

Reference: OFA-Sys/InsTag @0717193 (README: the released InsTagger model, no normalisation or sampling code) and the
paper (Sec. 2 tag normalisation, Alg. 1 complexity-first diverse sampling), which this file follows:

1. **Tagging.** The board's judge tags every query (instruction + input; the response is not read) with open
   tags. Our prompt (not upstream's) asks for a JSON list of short tags; :func:`parse_tags` reads a JSON list (of
   strings, or of InsTag's ``{"tag": ...}`` objects), also in a code fence or ``{"tags": [...]}``, or a bullet
   list; anything else (or an empty list) is a parse failure: re-asked, then counted, and the query has no tags.
   With a judge that takes structured outputs (``server: vllm``) the answer is a constrained JSON list.
2. **Normalisation** (:func:`normalise_tags`): rule aggregation (lowercase, non-alphanumerics to spaces, NLTK
   Porter stemming of each word), then the frequency filter (tags on fewer than ``min_freq`` queries dropped;
   the paper's alpha = 20 is for 100k+ queries, hence the default 2), then semantic aggregation: tags whose
   all-MiniLM-L6-v2 embeddings (of each tag's most frequent surface form, shared signal cache) have cosine
   similarity >= ``merge_threshold`` are merged (scikit-learn's DBSCAN, min_samples 1, cosine eps
   1 - merge_threshold; the paper: PhraseBERT + DBSCAN, eps 0.05), each group named by its most frequent tag.
   Deviations: rules before the frequency filter (the paper filters raw tags first, which at small scale drops
   tags that differ only by case or inflection); no association aggregation (FP-Growth).
3. **Complexity-first diverse sampling** (:func:`complexity_first_diverse`, Alg. 1): queries sorted by tag count,
   descending (stable: ties in pool order); repeated passes, each starting from an empty tag set T, take every
   remaining query that adds a tag not in T (T grows); until the budget. Queries that never add a tag (no tags
   left after normalisation or a failed parse) fill the rest in the same order, with a note.

Cost: judge requests, cached answers, tokens and parse failures are in the notes (``selbench.judged_selection``).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from selbench.judge.client import Ledger
from selbench.judge.verdicts import parse_string_list
from selbench.judged_selection import count_errors, judge_cost, record_cost, require_judge
from selbench.registry import register_method
from selbench.select import Selection
from sklearn.cluster import DBSCAN

SYSTEM = ("You label user requests to an AI assistant with tags that describe the user's intentions: the task, "
          "the topic or domain, and the skills or knowledge the request calls for.")
USER = ("Give tags for the user query below: between 1 and {max_tags} short tags of one to four words each. "
        "Answer with a JSON list of strings only, for example [\"tag one\", \"tag two\"].\n\nQuery:\n{query}")
MAX_TAG_CHARS = 60


def tags_constraint(max_tags: int) -> dict:
    return {"json": {"type": "array", "minItems": 1, "maxItems": max_tags,
                     "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_CHARS}}}


def tag_messages(query: str, max_tags: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER.replace("{max_tags}", str(max_tags)).replace("{query}", query)}]


def parse_tags(text: str | None, max_tags: int = 10) -> list[str] | None:
    """The tags in a judge's answer (a JSON list of strings or of InsTag's ``{"tag": ...}`` objects, or a bullet
    list: :func:`~selbench.judge.verdicts.parse_string_list`), or None (a parse failure)."""
    found = parse_string_list(text, key="tags", item_key="tag")
    tags = [t.strip().strip("\"'#").strip() for t in found or []]
    tags = [t for t in tags if t and len(t) <= MAX_TAG_CHARS]
    return tags[:max_tags] or None


def rule_normalise(tag: str) -> str:
    """Lowercase, non-alphanumerics to spaces, Porter-stem each word."""
    from nltk.stem import PorterStemmer

    stem = PorterStemmer().stem
    return " ".join(stem(w) for w in re.sub(r"[^0-9a-z]+", " ", tag.lower()).split())


def normalise_tags(raw: list[list[str]], min_freq: int, merge_threshold: float, embed) -> tuple[list[set], dict]:
    """Per query, its normalised tag set. ``embed(list[str]) -> [n, d]`` unit-norm embeddings (for merging)."""
    norm = [[rule_normalise(t) for t in tags] for tags in raw]
    surface: dict[str, Counter] = {}
    for tags, ns in zip(raw, norm):
        for t, n in zip(tags, ns):
            if n:
                surface.setdefault(n, Counter())[t.lower().strip()] += 1
    freq = Counter(n for ns in norm for n in set(ns) if n)
    kept = sorted(n for n, c in freq.items() if c >= min_freq)
    canon = {n: n for n in kept}
    if len(kept) > 1 and merge_threshold < 1.0:
        names = [min(surface[n], key=lambda s: (-surface[n][s], s)) for n in kept]
        E = np.asarray(embed(names), dtype=np.float64)
        labels = DBSCAN(eps=1.0 - merge_threshold, min_samples=1, metric="cosine").fit(E).labels_
        for group in set(labels.tolist()):
            members = [n for n, lab in zip(kept, labels) if lab == group]
            head = min(members, key=lambda m: (-freq[m], m))
            for m in members:
                canon[m] = head
    sets = [{canon[n] for n in ns if n in canon} for ns in norm]
    info = {"raw_tags": len({t for tags in raw for t in tags}), "after_rules": len(freq), "after_freq": len(kept),
            "after_merge": len(set(canon.values()))}
    return sets, info


def complexity_first_diverse(tag_sets: list[set[str]], budget: int) -> tuple[list[int], dict]:
    """Alg. 1: indices in selection order, exactly ``min(budget, n)``."""
    order = sorted(range(len(tag_sets)), key=lambda i: -len(tag_sets[i]))  # stable: ties in pool order
    remaining, chosen, passes = order, [], 0
    while len(chosen) < budget and remaining:
        seen, taken = set(), set()
        for i in remaining:
            if len(chosen) < budget and tag_sets[i] - seen:
                chosen.append(i)
                taken.add(i)
                seen |= tag_sets[i]
        if not taken:
            break
        passes += 1
        remaining = [i for i in remaining if i not in taken]
    fill = remaining[: budget - len(chosen)]
    return chosen + fill, {"passes": passes, "filled": len(fill)}


@register_method("instag", needs_output=False, uses_judge=True, family="strong-LLM", aspect="diversity",
                 description="InsTag: the LLM judge tags each query; tags normalised (stemming, frequency, "
                             "embedding merge); complexity-first diverse sampling over tags.",
                 citation="Lu et al. 2023, #InsTag: Instruction Tagging for Analyzing Supervised Fine-tuning of "
                          "Large Language Models (ICLR 2024, arXiv 2308.07074)",
                 reference="OFA-Sys/InsTag @0717193 (README; no selection code) + paper Alg. 1")
def select_instag(pool, budget, ctx, max_tags=10, min_freq=2, merge_threshold=0.9, max_tokens=128,
                  embed_model="all-MiniLM-L6-v2"):
    judge, ledger = require_judge(ctx, "instag"), Ledger()
    verdicts = judge.judge_many([tag_messages(e.prompt, max_tags) for e in pool],
                                lambda t: parse_tags(t, max_tags), ledger, desc="instag: tagging",
                                max_tokens=max_tokens, constraint=tags_constraint(max_tags))
    errors = count_errors(verdicts)
    raw, failed = [list(v.value) if v.ok and v.value else [] for v in verdicts], sum(not v.ok for v in verdicts)
    sets, info = normalise_tags(raw, min_freq, merge_threshold,
                                lambda texts: ctx.signals.text_embeddings(texts, model_name=embed_model,
                                                                          name="instag_tags"))
    picks, samp = complexity_first_diverse(sets, budget)
    n_tagless = sum(1 for s in sets if not s)
    notes = [(f"{len(pool) - failed} of {len(pool)} queries tagged; {failed} errors, left without tags "
              f"({errors['parse']} unparseable tag lists, {errors['other']} rejected by the judge); tags: "
              f"{info['raw_tags']} raw, {info['after_rules']} after lowercase+stemming, {info['after_freq']} on >= "
              f"{min_freq} queries, {info['after_merge']} after merging at cosine >= {merge_threshold:g}; "
              f"{n_tagless} queries have no tag left"),
             f"complexity-first diverse sampling: {samp['passes']} pass(es)"
             + (f"; {samp['filled']} filled in tag-count order (they add no unseen tag)" if samp["filled"] else "")]
    sel = Selection([pool.examples[i].id for i in picks], scores={e.id: float(len(s)) for e, s in zip(pool, sets)},
                    notes=notes, extras={**info, **samp, "parse_failures": failed, "tagless": n_tagless,
                                         "tags_of_selected": [sorted(sets[i]) for i in picks]})
    record_cost(sel, ctx, "judge", *judge_cost(ledger, len(pool), judge, "tag lists"))
    return sel
