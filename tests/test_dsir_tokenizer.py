"""DSIR's tokenizer equals NLTK's WordPunctTokenizer, including where Python's ``re`` would split differently."""

from __future__ import annotations

import re

import numpy as np
from nltk import ngrams
from nltk.tokenize import WordPunctTokenizer  # NLTK >= 3.10.3 (the regex engine); a test dependency

from selbench.methods.dsir import _WORDPUNCT, hash_bucket, ngram_counts

TRICKY = [
    "x² + y₂ = z",  # superscript / subscript digits: \w for re, not for regex
    "H₂O and CO₂ at 10³ Pa; ½ cup",
    "I love it ❤️ and ✔️ done",  # U+FE0F variation selector
    "emoji 👍🏽 \ufe0f end",
    "a\u0301b café naïve",  # combining accent
    "Don't stop: it's 3.5 km -- fine!!",
    "٣ ① ² ⁴ ₉ x²y₃",
]


def test_wordpunct_matches_nltk_on_tricky_characters():
    wpt = WordPunctTokenizer()
    differs_from_re = 0
    for s in TRICKY:
        ours = _WORDPUNCT.findall(s.lower())
        assert ours == wpt.tokenize(s.lower()), s
        differs_from_re += ours != re.findall(r"\w+|[^\w\s]+", s.lower())
    assert differs_from_re >= 4  # these strings really tell the two engines apart


def test_ngram_counts_match_nltk_features():
    wpt = WordPunctTokenizer()
    for s in TRICKY:
        words = wpt.tokenize(s.lower())
        ref = np.zeros(1000, dtype=np.int64)
        for w in words + [" ".join(g) for g in ngrams(words, 2)]:
            ref[hash_bucket(w, 1000)] += 1
        assert np.array_equal(ngram_counts(s, 1000), ref), s
