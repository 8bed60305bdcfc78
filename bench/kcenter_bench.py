"""Benchmark: k-center greedy (``selbench.methods.kcenter.kcenter_greedy``) against a plain float32 numpy loop.

Data: ``n`` x ``d`` standard-normal rows, L2-normalised, float32, from ``numpy.random.default_rng(seed)`` (the
shape of MiniLM sentence embeddings of a 50k pool). Both paths pick ``k`` centres from the same first centre. The
plain loop is the memory-bound floor the issue names: per step ``d = ((X - c)**2).sum(1)`` and
``min_d = np.minimum(min_d, d)`` in float32, then ``argmax``. The two are timed alternately in the same run
(``--repeats`` rounds, best time of each), and ``kcenter_greedy``'s picks and pick distances are checked to be
identical to the exact float64 reference ``kcenter_greedy_exact`` on the same data (slow: one float64 pass per pick;
``--no-check`` skips it). Prints both times and the ratio ours / plain (target <= 1.5).

    python bench/kcenter_bench.py                     # 1,000 of 50,000 x 384
    python bench/kcenter_bench.py --n 20000 --k 500 --no-check
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from selbench.methods.kcenter import kcenter_greedy, kcenter_greedy_exact


def make_data(n: int, d: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


def plain_loop(X: np.ndarray, k: int, first: int) -> list[int]:
    min_d = np.full(X.shape[0], np.inf, dtype=np.float32)
    picks, c = [first], first
    for _ in range(k):
        d = ((X - X[c]) ** 2).sum(1)
        min_d = np.minimum(min_d, d)
        c = int(np.argmax(min_d))
        picks.append(c)
    return picks[:k]


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-check", action="store_true", help="skip the exact float64 reference run")
    a = ap.parse_args()
    X = make_data(a.n, a.d, a.seed)
    print(f"data: {a.n} x {a.d} float32 ({X.nbytes / 1e6:.0f} MB), k={a.k}, first={a.first}, seed={a.seed}")
    t_plain, t_ours, ours = [], [], None
    for r in range(a.repeats):
        tp, _ = timed(plain_loop, X, a.k, a.first)
        to, ours = timed(kcenter_greedy, X, a.k, a.first)
        t_plain.append(tp)
        t_ours.append(to)
        print(f"round {r}: plain float32 loop {tp:.2f} s, kcenter_greedy {to:.2f} s, ratio {to / tp:.2f}")
    ratio = min(t_ours) / min(t_plain)
    print(f"best: plain {min(t_plain):.2f} s, kcenter_greedy {min(t_ours):.2f} s -> ratio {ratio:.2f} "
          f"({'within' if ratio <= 1.5 else 'OVER'} the 1.5x target)")
    if not a.no_check:
        t_ref, ref = timed(kcenter_greedy_exact, X, a.k, a.first)
        same = ours[0] == ref[0]
        first_diff = next((i for i, (p, q) in enumerate(zip(ours[0], ref[0])) if p != q), None)
        print(f"exact float64 reference: {t_ref:.2f} s; picks identical: {same}"
              + ("" if same else f" (first divergence at pick {first_diff})")
              + f"; pick distances identical: {np.array_equal(ours[1], ref[1])}; coverage radius "
              f"{ours[2].max():.9f} vs {ref[2].max():.9f} (equal: {ours[2].max() == ref[2].max()})")
        if not (same and np.array_equal(ours[1], ref[1]) and ours[2].max() == ref[2].max()):
            raise SystemExit("MISMATCH with the exact reference")


if __name__ == "__main__":
    main()
