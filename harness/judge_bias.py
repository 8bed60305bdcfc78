"""Judge-bias diagnostics for a board's judged metrics, from the records' per-item side files.

LLM judges carry known biases (position, verbosity, self-enhancement). Per judged metric, pooled over the board's
current cells (every row, budget and seed):

- **length**: Spearman's rho between the verdict and answer length in characters, with a 95% percentile bootstrap
  interval (``scipy.stats.bootstrap`` over the (verdict, length) pairs). MT-Bench: the 1-10 rating against the
  graded answer's length; AlpacaEval: the preference for the model's output against the length difference model -
  reference; pairwise: the two-order outcome (+1 win, 0 tie, -1 loss) against the length difference model -
  baseline. It is a correlation, not a causal effect (longer answers can be better answers); for AlpacaEval the
  board's mean win rate is shown next to its mean length-controlled win rate, the length-controlled variant.
- **position**: the share of decisive verdicts won by the answer shown first (0.5 = no position bias; pairwise:
  both orders of every comparison; AlpacaEval: alpaca_eval shows the two outputs in a seeded random order, so
  the share is 0.5 without position bias whoever is better), and the **flip rate**: the share of items whose
  verdict changes when the two answers swap places (pairwise: every comparison is judged in both orders;
  AlpacaEval: the ``position_check`` sample re-asked in the swapped order). Wilson intervals.
- **agreement between two judges**: :func:`judge_agreement` on two sets of per-item verdicts (Cohen's kappa for
  categorical verdicts, Spearman for ratings), and :func:`board_verdicts` to pair two boards' verdicts (the same
  board judged by two judges: the answers are the same, so items are paired on them). When the protocol names a
  ``second_judge``, every judged item is judged again by it (side files ``<seed>.<evaluator>.judge2.jsonl``) and
  each metric's line gives the two judges' agreement on the same answers.

The same items recur in every cell, so the pooled observations are not independent and the intervals are
somewhat narrow; read them as diagnostics of the judge, not as tests.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

N_BOOT = 2000
MIN_N = 5  # fewer verdicts: no correlation
BOOT_WORK = 10_000_000  # replicates x observations per correlation: fewer replicates (>= 400) on large boards
MAX_BATCH_CELLS = 4_000_000  # replicates x observations held in memory at once


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int

    def text(self, signed: bool = False) -> str:
        def f(x: float) -> str:
            x = round(x, 2) + 0.0  # no "-0.00"
            return f"{x:+.2f}" if signed else f"{x:.2f}"

        s = f(self.value)
        if self.ci_low is not None and self.ci_high is not None:
            s += f" [{f(self.ci_low)}, {f(self.ci_high)}]"
        return s


# -- statistics -------------------------------------------------------------------------------------------------

def _spearman_vectorized(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho of each resample (Pearson's r of the ranks); a resample with one constant side: 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sps.pearsonr(sps.rankdata(x, axis=axis), sps.rankdata(y, axis=axis), axis=axis).statistic
    return np.nan_to_num(r)


def spearman(x, y, *, n_resamples: int | None = None, seed: int = 0) -> Estimate | None:
    """Spearman's rho of paired observations with a 95% percentile bootstrap interval; None below ``MIN_N``
    observations or when either side is constant (no correlation is defined). ``n_resamples``: by default
    ``N_BOOT``, fewer (at least 400) above ``BOOT_WORK / N_BOOT`` observations, where the interval is narrow."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < MIN_N or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    n_resamples = n_resamples or max(400, min(N_BOOT, BOOT_WORK // len(x)))
    rho = float(sps.spearmanr(x, y).statistic)
    res = sps.bootstrap((x, y), _spearman_vectorized, paired=True, vectorized=True, n_resamples=n_resamples,
                        batch=max(1, MAX_BATCH_CELLS // len(x)), method="percentile",
                        rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return Estimate(rho, float(lo), float(hi), len(x))


def proportion(k: int, n: int) -> Estimate | None:
    """k of n with a 95% Wilson interval."""
    if n == 0:
        return None
    ci = sps.binomtest(k, n).proportion_ci(method="wilson")
    return Estimate(k / n, float(ci.low), float(ci.high), n)


def cohen_kappa(x, y, *, n_resamples: int = 1000, seed: int = 0) -> Estimate | None:
    """Cohen's kappa of two judges' categorical verdicts on the same items, with a 95% percentile bootstrap
    interval; None below ``MIN_N`` items."""
    from sklearn.metrics import cohen_kappa_score

    if len(x) < MIN_N:
        return None
    labels = {v: i for i, v in enumerate(sorted(set(x) | set(y), key=str))}
    a, b = np.array([labels[v] for v in x]), np.array([labels[v] for v in y])

    def kappa(u, v):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.nan_to_num(cohen_kappa_score(u, v, labels=list(labels.values()))))

    value = kappa(a, b)
    res = sps.bootstrap((a, b), kappa, paired=True, vectorized=False, n_resamples=n_resamples,
                        method="percentile", rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return Estimate(value, float(lo), float(hi), len(a))


def judge_agreement(a: dict[Any, Any], b: dict[Any, Any], kind: Literal["categorical", "rating"]
                    ) -> Estimate | None:
    """Agreement of two judges' verdicts ``{item: verdict}`` on the items both judged: Cohen's kappa for
    categorical verdicts (AlpacaEval preferences, pairwise outcomes), Spearman's rho for ratings (MT-Bench)."""
    items = sorted(set(a) & set(b), key=str)
    x, y = [a[i] for i in items], [b[i] for i in items]
    return spearman(x, y) if kind == "rating" else cohen_kappa(x, y)


# -- per-item observations from the side files ------------------------------------------------------------------

@dataclass
class Obs:
    """One judged item: ``verdict`` (numeric, higher = the model under test preferred; None: not parsed),
    ``length`` (what the verdict is correlated with), ``raw`` (the verdict as judged, for agreement),
    ``first_wins`` (per decisive ordered verdict: did the answer shown first win), ``flip`` (both orders parsed:
    did they disagree)."""

    verdict: float | None = None
    length: float | None = None
    raw: Any = None
    first_wins: tuple[bool, ...] = ()
    flip: bool | None = None
    answer: str = ""


def _mt_bench(row: dict) -> list[tuple[str, Obs]]:
    o = Obs(answer=row.get("answer") or "")
    if row.get("score") is not None and not row.get("error"):
        o.verdict = o.raw = float(row["score"])
        o.length = len(o.answer)
    return [("mt_bench/score", o)]


def _alpaca_eval(row: dict) -> list[tuple[str, Obs]]:
    from .judge.alpaca_eval import model_shown_first, preference_side

    o = Obs(answer=row.get("output") or "")
    pref = row.get("preference")
    if pref is not None:
        o.verdict, o.raw = pref - 1.0, pref
        o.length = len(o.answer) - len(row.get("reference_output") or "")
        if pref != 1.5 and row.get("instruction") is not None:
            o.first_wins = ((pref > 1.5) == model_shown_first(row["instruction"]),)
        swapped = row.get("preference_swapped")  # the position_check re-ask, as the model's preference
        if swapped is not None:
            o.flip = preference_side(pref) != preference_side(swapped)
    return [("alpaca_eval/win_rate", o)]


def _order_sign(value: Any, model_first: bool) -> int | None:
    from .judge.verdicts import pair_v2_sign, scores_sign

    if isinstance(value, (list, tuple)) and len(value) == 2:
        return scores_sign((float(value[0]), float(value[1])), model_first)
    return pair_v2_sign(value, model_first) if isinstance(value, str) else None


OUTCOME_SIGN = {"win": 1.0, "tie": 0.0, "lose": -1.0}


def _pairwise(row: dict) -> list[tuple[str, Obs]]:
    o = Obs(answer=row.get("answer") or "")
    s1 = _order_sign(row.get("verdict_model_first"), True)
    s2 = _order_sign(row.get("verdict_model_second"), False)
    # the model is shown first in the first order (first wins: +1) and second in the other (first wins: -1)
    o.first_wins = tuple(s == first for s, first in ((s1, 1), (s2, -1)) if s)
    if s1 is not None and s2 is not None:
        o.flip = s1 != s2
    if row.get("outcome") in OUTCOME_SIGN:
        o.verdict, o.raw = OUTCOME_SIGN[row["outcome"]], row["outcome"]
        o.length = len(o.answer) - len(row.get("baseline_answer") or "")
    return [(f"pairwise/ws_vs_{row.get('baseline')}", o)]


# evaluator -> per-item rows to observations; a judged evaluator without one gets no diagnostics
EXTRACTORS: dict[str, Callable[[dict], list[tuple[str, Obs]]]] = {
    "mt_bench": _mt_bench, "alpaca_eval": _alpaca_eval, "pairwise": _pairwise}
AGREEMENT_KIND = {"mt_bench": "rating", "alpaca_eval": "categorical", "pairwise": "categorical"}
LENGTH_WHAT = {"mt_bench": "rating vs answer length",
               "alpaca_eval": "preference vs length difference model − reference",
               "pairwise": "outcome vs length difference model − baseline"}
FLIP_WHAT = {"alpaca_eval": "swapped-order re-ask", "pairwise": "the two orders disagree"}


def _side_rows(path: Path, rec: dict, evaluator: str, second: bool = False):
    import json

    from .record import SECOND_JUDGE

    name = (rec.get("side_files") or {}).get(f"{evaluator}.{SECOND_JUDGE}" if second else evaluator)
    side = path.with_name(name) if name else None
    if side is None or not side.is_file():
        return
    for line in side.read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield json.loads(line)


def board_verdicts(records: list[tuple[Path, dict]], evaluator: str, second: bool = False) -> dict[tuple, Any]:
    """Every parsed verdict of ``evaluator`` on the board (``second``: the protocol's second judge's), keyed by
    (metric, row, budget, seed, item, hash of the judged answer): two judges of the same answers pair up
    (:func:`judge_agreement`)."""
    out = {}
    for path, rec in records:
        for row in _side_rows(path, rec, evaluator, second):
            for metric, o in EXTRACTORS[evaluator](row):
                if o.raw is not None:
                    answer = hashlib.sha256(o.answer.encode()).hexdigest()[:16]
                    out[(metric, rec["method"]["row"], rec.get("budget"), rec["seed"], row.get("item"), answer)] = \
                        o.raw
    return out


def board_agreement(records_a: list[tuple[Path, dict]], records_b: list[tuple[Path, dict]], evaluator: str
                    ) -> dict[str, Estimate | None]:
    """Per metric of ``evaluator``, the agreement of two boards' judges on the verdicts both gave (same cell, item
    and answer): the same board judged by two judges, e.g. a copy of its folder with another ``judge:``."""
    return _agreement_by_metric(board_verdicts(records_a, evaluator), board_verdicts(records_b, evaluator), evaluator)


def _agreement_by_metric(a: dict[tuple, Any], b: dict[tuple, Any], evaluator: str) -> dict[str, Estimate | None]:
    """:func:`judge_agreement` per metric of two :func:`board_verdicts` maps."""
    return {m: judge_agreement({k: v for k, v in a.items() if k[0] == m}, {k: v for k, v in b.items() if k[0] == m},
                               AGREEMENT_KIND[evaluator])
            for m in sorted({k[0] for k in a} & {k[0] for k in b})}


# -- the board's diagnostics ------------------------------------------------------------------------------------

@dataclass
class JudgeBias:
    metric: str  # e.g. "mt_bench/score"
    cells: int
    judged: int  # judged items, unparseable ones included
    parsed: int
    length: Estimate | None = None
    first_wins: Estimate | None = None
    flips: Estimate | None = None
    win_rates: tuple[float, float, str, int] | None = None  # AlpacaEval: mean win rate, mean LC, LC column, cells
    agreement: Estimate | None = None  # with the protocol's second judge, on the items both parsed
    second_judged: int = 0  # items the second judge judged (0: no second judge)

    @property
    def evaluator(self) -> str:
        return self.metric.split("/", 1)[0]

    def sentence(self) -> str:
        head = f"`{self.metric}`: "
        tail = f"{self.parsed} of {self.judged} verdicts parsed, {self.cells} cell(s)"
        if not self.parsed:
            return head + f"no parsed verdict to diagnose ({tail})"
        parts = [f"length ρ {self.length.text(signed=True)} ({LENGTH_WHAT[self.evaluator]}, n={self.length.n})"
                 if self.length else f"length ρ n/a ({LENGTH_WHAT[self.evaluator]}: too few or all-equal verdicts)"]
        if self.win_rates:
            wr, lc, name, n = self.win_rates
            parts.append(f"win rate {wr:.1f} vs length-controlled {lc:.1f} (`{name}`, means over {n} cell(s))")
        if self.evaluator in FLIP_WHAT:
            if self.first_wins:
                parts.append(f"first-shown wins {self.first_wins.text()} of {self.first_wins.n} decisive verdicts "
                             "(0.5 = no position bias)")
            if self.flips:
                parts.append(f"flip rate {self.flips.text()} of {self.flips.n} ({FLIP_WHAT[self.evaluator]})")
            elif self.evaluator == "alpaca_eval":
                parts.append("flip rate not measured (`position_check: 0`)")
        if self.second_judged:
            what = "Spearman ρ" if AGREEMENT_KIND[self.evaluator] == "rating" else "Cohen's κ"
            parts.append(f"agreement with the second judge {what} {self.agreement.text(signed=True)} "
                         f"(n={self.agreement.n})" if self.agreement else
                         f"agreement with the second judge n/a ({self.second_judged} judged, too few both parsed)")
        return head + "; ".join(parts) + f"; {tail}"

    def rows(self) -> list[dict[str, Any]]:
        """Long rows for ``judge_bias.csv``: one per statistic."""
        base = {"metric": self.metric, "cells": self.cells, "judged": self.judged, "parsed": self.parsed}
        out = [{**base, "statistic": "parsed_share", "value": self.parsed / self.judged if self.judged else None,
                "n": self.judged, "note": "judged items with a parsed verdict"}]
        notes = {"length_spearman": LENGTH_WHAT[self.evaluator], "second_judge_agreement":
                 f"{'Spearman' if AGREEMENT_KIND[self.evaluator] == 'rating' else 'Cohen kappa'} with the second judge"}
        for stat, e in (("length_spearman", self.length), ("first_position_win_share", self.first_wins),
                        ("position_flip_rate", self.flips), ("second_judge_agreement", self.agreement)):
            if e is not None:
                out.append({**base, "statistic": stat, **asdict(e),
                            "note": notes.get(stat, FLIP_WHAT.get(self.evaluator, ""))})
        if self.win_rates:
            wr, lc, name, n = self.win_rates
            out += [{**base, "statistic": "win_rate_mean", "value": wr, "n": n, "note": "win_rate"},
                    {**base, "statistic": "lc_win_rate_mean", "value": lc, "n": n, "note": name}]
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Pool:
    cells: set = field(default_factory=set)
    obs: list[Obs] = field(default_factory=list)


def _win_rates(records: list[tuple[Path, dict]]) -> tuple[float, float, str, int] | None:
    """AlpacaEval's raw and length-controlled win rates, means over the cells that report both (the LC column
    most cells report: ``lc_win_rate``, alpaca_eval's GLM, or ``lc_win_rate_approx``)."""
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, rec in records:
        m = rec.get("metrics") or {}
        for name in ("lc_win_rate", "lc_win_rate_approx"):
            if "alpaca_eval/win_rate" in m and f"alpaca_eval/{name}" in m:
                pairs[name].append((m["alpaca_eval/win_rate"]["value"], m[f"alpaca_eval/{name}"]["value"]))
    if not pairs:
        return None
    name = max(pairs, key=lambda k: len(pairs[k]))
    wr, lc = np.mean(pairs[name], axis=0)
    return float(wr), float(lc), name, len(pairs[name])


def board_judge_bias(records: list[tuple[Path, dict]]) -> list[JudgeBias]:
    """The diagnostics of every judged metric with per-item side files in ``records`` (the board's current
    records); a board with no judged evaluator gets an empty list."""
    pools: dict[str, _Pool] = defaultdict(_Pool)
    for i, (path, rec) in enumerate(records):
        for evaluator, extract in EXTRACTORS.items():
            for row in _side_rows(path, rec, evaluator):
                for metric, o in extract(row):
                    pools[metric].cells.add(i)
                    pools[metric].obs.append(o)
    second: dict[str, int] = defaultdict(int)  # metric -> items the second judge judged
    for path, rec in records:
        for evaluator, extract in EXTRACTORS.items():
            for row in _side_rows(path, rec, evaluator, second=True):
                for metric, _ in extract(row):
                    second[metric] += 1
    agreement: dict[str, Estimate | None] = {}
    for ev in {m.split("/", 1)[0] for m in second}:
        agreement.update(_agreement_by_metric(board_verdicts(records, ev), board_verdicts(records, ev, second=True), ev))
    order = list(EXTRACTORS)
    out = []
    for metric in sorted(pools, key=lambda m: (order.index(m.split("/", 1)[0]), m)):
        obs = pools[metric].obs
        parsed = [o for o in obs if o.verdict is not None]
        firsts = [w for o in obs for w in o.first_wins]
        flips = [o.flip for o in obs if o.flip is not None]
        b = JudgeBias(metric, len(pools[metric].cells), len(obs), len(parsed),
                      length=spearman([o.verdict for o in parsed], [o.length for o in parsed]),
                      first_wins=proportion(sum(firsts), len(firsts)), flips=proportion(sum(flips), len(flips)))
        if metric.startswith("alpaca_eval/"):
            b.win_rates = _win_rates(records)
        if second.get(metric):
            b.second_judged, b.agreement = second[metric], agreement.get(metric)
        out.append(b)
    return out


def bias_csv(bias: list[JudgeBias]) -> str:
    import pandas as pd

    if not bias:
        return ""
    cols = ["metric", "statistic", "value", "ci_low", "ci_high", "n", "cells", "judged", "parsed", "note"]
    buf = io.StringIO()
    pd.DataFrame([r for b in bias for r in b.rows()], columns=cols).round(6).to_csv(buf, index=False,
                                                                                    float_format="%.6g")
    return buf.getvalue()
