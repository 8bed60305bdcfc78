import yaml

from selbench.cache import atomic_write_json
from selbench.leaderboard import build_leaderboard
from selbench.protocol import load_protocol


def rec(h, row, budget, seed, acc, gsm):
    return {"protocol_hash": h, "method": {"row": row, "family": "baseline"}, "budget": budget, "seed": seed,
            "metrics": {"lm_eval/arc_easy_local/acc": {"value": acc, "stderr": 0.1},
                        "lm_eval/arc_easy_local/acc_norm": {"value": 0.0, "stderr": 0.1},
                        "lm_eval/gsm8k_local/exact_match[flexible-extract]": {"value": gsm, "stderr": 0.1}},
            "timings": {"select_s": 1.0, "train_s": 10.0 + seed}}


def make_board(tmp_path, **extra):
    board = tmp_path / "leaderboards" / "b"
    board.mkdir(parents=True)
    (board / "protocol.yaml").write_text(yaml.safe_dump({"name": "b", "base_model": {"path": "m"},
                                                         "pool": {"path": "p.json"}, "budgets": [4],
                                                         "methods": [{"name": "random"}], **extra}))
    return board, load_protocol(board / "protocol.yaml")


def test_leaderboard_means_spread_reference_rows_and_stale_records(tmp_path):
    board, protocol = make_board(tmp_path)
    h, res = protocol.hash, tmp_path / "results"
    atomic_write_json(res / "b" / "base" / "seed0.json", rec(h, "base", None, 0, 0.2, 0.0))
    atomic_write_json(res / "b" / "random" / "4" / "seed0.json", rec(h, "random", 4, 0, 0.4, 0.0))
    atomic_write_json(res / "b" / "random" / "4" / "seed1.json", rec(h, "random", 4, 1, 0.6, 0.2))
    atomic_write_json(res / "b" / "zeta" / "4" / "seed0.json", rec(h, "zeta", 4, 0, 0.9, 0.1))
    atomic_write_json(res / "b" / "random" / "8" / "seed0.json", rec("oldhash", "random", 8, 0, 1.0, 1.0))

    out = build_leaderboard(res, board, "b", protocol)
    t = out["table"]
    assert out["records"] == 4 and out["stale"] == 1
    assert set(out["changed"]) == {"LEADERBOARD.md", "leaderboard.csv", "leaderboard.html"}
    assert list(t["method"]) == ["base", "random", "zeta"]  # reference rows first
    r = t[t["method"] == "random"].iloc[0]
    assert abs(r["lm_eval/arc_easy_local/acc"] - 0.5) < 1e-9 and r["seeds"] == 2
    assert abs(r["lm_eval/arc_easy_local/acc_std"] - 0.1414213) < 1e-6
    assert abs(r["bench_avg"] - (0.5 + 0.1) / 2) < 1e-9  # acc for ARC, exact_match for GSM8K; acc_norm not used
    md = (board / "LEADERBOARD.md").read_text()
    assert h in md and "0.500 ± 0.141" in md and "1 records of other protocol hashes" in md and "oldhash" not in md
    assert build_leaderboard(res, board, "b", protocol)["changed"] == []


def test_markdown_shows_headline_metrics_and_judge_errors_csv_keeps_everything(tmp_path):
    board, protocol = make_board(tmp_path)
    r = rec(protocol.hash, "ifd", 4, 0, 0.5, 0.0)
    r["metrics"].update({"mt_bench/score": {"value": 6.5, "stderr": 0.2}, "mt_bench/turn1": {"value": 7.0},
                         "alpaca_eval/win_rate": {"value": 40.0}, "alpaca_eval/lc_win_rate": {"value": 45.0},
                         "pairwise/ws_vs_full": {"value": 1.2}, "pairwise/ws_vs_full/koala": {"value": 1.5},
                         "pairwise/flip_rate_vs_full": {"value": 0.25}})
    r["evaluation"] = {"lm_eval": {"counts": {}}, "mt_bench": {"counts": {"judgments": 6, "errors": 2}},
                       "alpaca_eval": {"counts": {"judgments": 4, "errors": 0}},
                       "pairwise": {"counts": {"judgments": 10, "errors": 3, "vs_full/error": 3}}}
    atomic_write_json(tmp_path / "results" / "b" / "ifd" / "4" / "seed0.json", r)
    build_leaderboard(tmp_path / "results", board, "b", protocol)
    md = (board / "LEADERBOARD.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    for col in ("bench_avg", "arc_easy/acc", "mt_bench/score", "alpaca_eval/win_rate", "alpaca_eval/lc_win_rate",
                "pairwise/ws_vs_full", "pairwise/flip_rate_vs_full", "judge errors"):
        assert col in header, col
    assert "acc_norm" not in header and "turn1" not in header and "koala" not in header
    row = next(line for line in md.splitlines() if line.startswith("| ifd"))
    assert "| 5/20 |" in row and "6.500" in row and "1.200" in row
    csv = (board / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert {"mt_bench/turn1", "pairwise/ws_vs_full/koala", "lm_eval/arc_easy_local/acc_norm", "judge_errors",
            "judged"} <= set(csv)


def test_configured_judged_columns_show_even_when_no_verdict_parsed(tmp_path):
    board, protocol = make_board(tmp_path, evaluation={"mt_bench": {"turns": [1]}})
    r = rec(protocol.hash, "random", 4, 0, 0.5, 0.0)
    r["evaluation"] = {"mt_bench": {"counts": {"judgments": 6, "errors": 6}}}  # a judge that never parsed
    atomic_write_json(tmp_path / "results" / "b" / "random" / "4" / "seed0.json", r)
    build_leaderboard(tmp_path / "results", board, "b", protocol)
    md = (board / "LEADERBOARD.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "mt_bench/score" in header and "alpaca_eval" not in header
    row = next(line for line in md.splitlines() if line.startswith("| **random**"))
    assert "| 6/6 |" in row and "| – |" in row


def test_judged_selection_cost_in_tokens_is_a_column(tmp_path):
    """A method that rated the pool with the judge shows the tokens it spent; the others show none."""
    board, protocol = make_board(tmp_path)
    res = tmp_path / "results"
    atomic_write_json(res / "b" / "random" / "4" / "seed0.json", rec(protocol.hash, "random", 4, 0, 0.4, 0.0))
    r = rec(protocol.hash, "alpagasus", 4, 0, 0.5, 0.0)
    r["selection"] = {"cost": {"wall_s": 3.0, "judge": {"calls": 12, "prompt_tokens": 1000, "completion_tokens": 24}}}
    atomic_write_json(res / "b" / "alpagasus" / "4" / "seed0.json", r)
    out = build_leaderboard(res, board, "b", protocol)
    t = out["table"].set_index("method")
    assert t.loc["alpagasus", "select_tokens"] == 1024 and t["select_tokens"].isna()["random"]
    md = (board / "LEADERBOARD.md").read_text()
    assert "select judge tokens" in next(line for line in md.splitlines() if line.startswith("| method"))
    assert next(line for line in md.splitlines() if line.startswith("| alpagasus")).rstrip(" |").endswith("1024")
