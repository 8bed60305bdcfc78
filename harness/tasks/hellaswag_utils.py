"""HellaSwag preprocessing as lm-eval's own hellaswag task does it (context joined, WikiHow brackets removed)."""

import re


def _clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def process_docs(dataset):
    def _doc(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {"query": _clean(doc["activity_label"] + ": " + ctx),
                "choices": [_clean(e) for e in doc["endings"]], "gold": int(doc["label"])}

    return dataset.map(_doc)
