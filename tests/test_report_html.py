"""leaderboard.html: built from results/ alone, deterministic, and rendering in headless Chromium (Debian's
``chromium`` package, driven over the DevTools protocol on a pipe) with its plots and no console error.

CI installs chromium (.ci/run). A developer without it may set ``SELBENCH_SKIP_BROWSER=1`` to skip the browser
test; without that variable (and always under CI) a missing chromium fails the test."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from selbench import stats
from selbench.cache import atomic_write_json
from selbench.leaderboard import build_leaderboard
from selbench.protocol import load_protocol
from selbench.tracking import log_leaderboard, read_offline_run, run_path

# Planted effects per row: NLL (lower is better) and accuracy (higher is better).
EFFECTS = {"random": (0.0, 0.0), "harmful": (0.3, -0.25), "helpful": (-0.2, 0.2), "neutral": (0.0, 0.0)}
BUDGETS = (16, 64)
SELECT_S = {"harmful": 40.0, "helpful": 400.0, "neutral": 4.0}


def write_cell(res: Path, h: str, row: str, budget: int | None, seed: int, nll, acc, tokens: int):
    rel = Path(row) / (str(budget) if budget is not None else "") / f"seed{seed}.json"
    path = res / "b" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = path.with_name(f"seed{seed}.ref_likelihood.jsonl")
    ref.write_text("".join(json.dumps({"item": f"ae/{i:03d}", "scores": {"nll": float(v)}}) + "\n"
                           for i, v in enumerate(nll)))
    lm = path.with_name(f"seed{seed}.lm_eval.jsonl")
    lm.write_text("".join(json.dumps({"item": f"arc_easy_local/{i}", "scores": {"arc_easy_local/acc": float(v)}})
                          + "\n" for i, v in enumerate(acc)))
    atomic_write_json(path, {
        "protocol_hash": h, "method": {"row": row, "family": "x"}, "budget": budget, "seed": seed,
        "side_files": {"ref_likelihood": ref.name, "lm_eval": lm.name},
        "metrics": {"ref_likelihood/nll": {"value": float(np.mean(nll)), "higher_is_better": False},
                    "lm_eval/arc_easy_local/acc": {"value": float(np.mean(acc)), "higher_is_better": True}},
        "evaluation": {"mt_bench": {"counts": {"judgments": 4, "errors": 0, "judge/prompt_tokens": tokens,
                                               "judge/completion_tokens": tokens // 10}}},
        "timings": {} if budget is None else {"select_s": SELECT_S.get(row, 0.0), "train_s": 30.0}})


def make_board(root: Path):
    board = root / "leaderboards" / "b"
    board.mkdir(parents=True)
    (board / "protocol.yaml").write_text(yaml.safe_dump({"name": "b", "base_model": {"path": "m"},
                                                         "pool": {"path": "p.json"}, "budgets": list(BUDGETS),
                                                         "methods": [{"name": "random"}]}))
    protocol = load_protocol(board / "protocol.yaml")
    rng = np.random.default_rng(5)
    n = 150
    difficulty, easiness = rng.normal(2.0, 0.5, n), rng.normal(0, 1, n)
    res = root / "results"

    def cell(row, budget, seed, d_nll, d_acc):
        nll = difficulty + d_nll + rng.normal(0, 0.02) + rng.normal(0, 0.05, n)
        acc = (easiness + 2.5 * d_acc + rng.normal(0, 0.3, n) > 0).astype(float)
        write_cell(res, protocol.hash, row, budget, seed, nll, acc, tokens=1000 + 100 * len(row))

    for budget in BUDGETS:
        for row, (d_nll, d_acc) in EFFECTS.items():
            for seed in range(3):
                cell(row, budget, seed, d_nll - 0.001 * budget, d_acc)
    for seed in range(3):
        cell("full", 300, seed, -0.3, 0.1)
    cell("base", None, 0, 0.5, -0.1)
    return board, protocol, res


@pytest.fixture(scope="module", autouse=True)
def fast_bootstrap():
    """Fewer bootstrap draws in this module (every build of the board): it tests the page, not the statistics."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stats, "paired_difference", functools.partial(stats.paired_difference, n_boot=500))
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    board, protocol, res = make_board(root)
    return board, protocol, res, build_leaderboard(res, board, "b", protocol)


def test_page_is_built_from_results_self_contained_and_deterministic(built):
    board, protocol, res, out = built
    assert "leaderboard.html" in out["changed"]
    page = (board / "leaderboard.html").read_text(encoding="utf-8")
    figs = out["figures"]
    assert list(figs) == ["budget-ref-likelihood-nll", "budget-bench-avg", "budget-lm-eval-arc-easy-local-acc",
                          "vs-random-heatmap", "cost-vs-gain"]
    for fig_id in figs:
        assert page.count(f'id="fig-{fig_id}"') == 1
    # plotly.js inline, exactly once (the browser test checks that nothing is fetched from the network).
    assert page.count("<script src=") == 0 and page.count("plotly.js v") == 1
    # The noise floor sentences and the table, as in LEADERBOARD.md.
    md = (board / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert page.count("differences below") == md.count("differences below") >= 2
    assert "<table>" in page and page.count("<tr>") == md.count("\n| ") and '<span class="down">▼</span>' in page
    # A second regeneration rewrites nothing; the same inputs elsewhere give the same bytes (no ids, no clock).
    assert build_leaderboard(res, board, "b", protocol)["changed"] == []
    other = board.parent / "copy"
    shutil.copytree(board, other, ignore=shutil.ignore_patterns("*.md", "*.csv", "*.html"))
    build_leaderboard(res, other, "b", protocol)
    assert (other / "leaderboard.html").read_bytes() == (board / "leaderboard.html").read_bytes()


def test_figures_read_better_the_same_way_for_every_metric(built):
    _, _, _, out = built
    heat = out["figures"]["vs-random-heatmap"].data[0]
    cell = {(y, x): (z, t) for y, zs, ts in zip(heat.y, heat.z, heat.text) for x, z, t in zip(heat.x, zs, ts)}
    nll, acc = "ref_likelihood/nll (lower is better)", "lm_eval/arc_easy/acc"
    for budget in BUDGETS:
        z, t = cell[(f"harmful @ {budget}", nll)]
        assert z < -1 and t.startswith("+") and t.endswith("▼")  # higher NLL: worse, drawn red
        z, t = cell[(f"helpful @ {budget}", nll)]
        assert z > 1 and t.startswith("-") and t.endswith("▲")  # lower NLL: better, drawn blue
        assert cell[(f"harmful @ {budget}", acc)][0] < 0 and cell[(f"helpful @ {budget}", acc)][0] > 0
        assert not cell[(f"neutral @ {budget}", nll)][1].endswith(("▲", "▼"))
    assert not any(y.startswith(("random", "base", "full")) for y in heat.y)
    # Metric vs budget: random's band plus one trace per other method, full and base as references.
    names = [t.name for t in out["figures"]["budget-ref-likelihood-nll"].data]
    assert names[:2] == ["random 95% CI", "random"] and {"harmful", "helpful", "neutral"} <= set(names)
    assert any(n.startswith("full (pool, 300") for n in names) and any(n.startswith("base model") for n in names)
    harmful = next(t for t in out["figures"]["budget-ref-likelihood-nll"].data if t.name == "harmful")
    assert len(harmful.x) == 2 and all(a > 0 and b > 0 for a, b in zip(harmful.error_y.array,
                                                                      harmful.error_y.arrayminus))
    # Cost against gain, on the first headline metric (nll: sign flipped so up is better), with judge tokens.
    cost = out["figures"]["cost-vs-gain"]
    points = {t.text[0]: (t.x[0], t.y[0]) for t in cost.data if t.xaxis == "x"}
    assert points["random @ 16"] == (30.0, 0.0)
    assert points["harmful @ 16"][0] == pytest.approx(40 + 30) and points["harmful @ 16"][1] < -0.2
    assert points["helpful @ 64"][1] > 0.1
    tokens = {t.text[0]: t.x[0] for t in cost.data if t.xaxis == "x2"}
    assert tokens["harmful @ 64"] == 1700 + 170


def test_empty_board_still_gets_a_page(tmp_path):
    board = tmp_path / "leaderboards" / "b"
    board.mkdir(parents=True)
    (board / "protocol.yaml").write_text(yaml.safe_dump({"name": "b", "base_model": {"path": "m"},
                                                         "pool": {"path": "p.json"}, "budgets": [4],
                                                         "methods": [{"name": "random"}]}))
    out = build_leaderboard(tmp_path / "results", board, "b", load_protocol(board / "protocol.yaml"))
    assert out["figures"] == {} and "No figures" in (board / "leaderboard.html").read_text(encoding="utf-8")


# -- headless Chromium --------------------------------------------------------------------------------------------

def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if os.environ.get("SELBENCH_SKIP_BROWSER") == "1" and not os.environ.get("CI"):
        pytest.skip("chromium not installed and SELBENCH_SKIP_BROWSER=1")
    pytest.fail("chromium is not installed: `apt-get install chromium` (Debian), as .ci/run does; set "
                "SELBENCH_SKIP_BROWSER=1 to skip this test on a developer machine without it")


class DevTools:
    """Chromium's DevTools protocol over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: messages out;
    NUL-separated JSON), so no websocket client or browser-automation package is needed."""

    def __init__(self, binary: str, profile: Path):
        def high(fd: int) -> int:  # out of the way of 3 and 4, where the child gets its ends
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return moved

        cmd_r, self._cmd_w = map(high, os.pipe())
        self._msg_r, msg_w = map(high, os.pipe())
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1400,2000", "about:blank"]
        # posix_spawn, not fork + preexec_fn: the test process runs threads (wandb), and fds 3/4 must be set.
        self.pid = os.posix_spawn(binary, args, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, cmd_r, 3), (os.POSIX_SPAWN_DUP2, msg_w, 4),
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
        os.close(cmd_r)
        os.close(msg_w)
        self._buf, self._id, self.events = b"", 0, []
        self.session = None

    def close(self):
        try:
            self.session = None
            self.send("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._cmd_w)
        os.close(self._msg_r)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._msg_r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._msg_r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, timeout: float = 30, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == event:
                return self.events.pop(i)
        while True:
            e = self._read(deadline)
            if e.get("method") == event:
                return e
            self.events.append(e)

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def load_page(binary: str, page: Path, profile: Path) -> tuple[dict, list[str]]:
    """Open ``page``; return what the DOM holds once plotly has drawn, and every console error, exception and
    request that would leave the machine (the page must work offline)."""
    dt = DevTools(binary, profile)
    try:
        target = dt.send("Target.createTarget", url="about:blank")["targetId"]
        dt.session = dt.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.send(f"{domain}.enable")
        dt.send("Page.navigate", url=page.as_uri())
        dt.wait_for("Page.loadEventFired")
        state, last, since = {}, None, time.monotonic()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # plotly draws right after load: wait until every div holds its svg,
            # or until nothing more is drawn for 2 s (a broken page)
            state = dt.evaluate("""(() => {
                const plots = [...document.querySelectorAll('.plotly-graph-div')];
                return {divs: plots.length,
                        drawn: plots.filter(d => d.classList.contains('js-plotly-plot')
                                                 && d.querySelector('svg.main-svg')).map(d => d.id),
                        traces: plots.map(d => d.querySelectorAll('g.trace, g.hm').length),
                        heatmap_cells: document.querySelectorAll('#fig-vs-random-heatmap g.heatmaplayer image').length,
                        table_rows: document.querySelectorAll('table tr').length};
            })()""")
            if state["divs"] and len(state["drawn"]) == state["divs"]:
                break
            if state["drawn"] != last:
                last, since = state["drawn"], time.monotonic()
            elif time.monotonic() - since > 2:
                break
            time.sleep(0.2)
        dt.send("Runtime.evaluate", expression="0")  # flush console events queued behind the last call
    finally:
        dt.close()
    errors = []
    for e in dt.events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(f"exception: {d.get('text')} {(d.get('exception') or {}).get('description', '')}")
        elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e.get("method") == "Network.requestWillBeSent" and not p["request"]["url"].startswith(
                ("file:", "data:", "about:", "blob:")):
            errors.append(f"network request: {p['request']['url']}")
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(f"log: {p['entry']['text']} ({p['entry'].get('url', '')})")
    return state, errors


def test_page_renders_in_headless_chromium_with_its_plots(built, tmp_path):
    binary = chromium_binary()
    board, _, _, out = built
    state, errors = load_page(binary, board / "leaderboard.html", tmp_path / "profile")
    assert errors == []
    assert state["divs"] == len(out["figures"]) == 5 and sorted(state["drawn"]) == sorted(
        f"fig-{k}" for k in out["figures"])
    assert all(n > 0 for n in state["traces"])
    table_lines = [line for line in (board / "LEADERBOARD.md").read_text().splitlines() if line.startswith("| ")]
    # the verdicts (a header and 3 metrics x 2 budgets) and the board (a header and 10 rows)
    assert state["heatmap_cells"] == 1 and state["table_rows"] == len(table_lines) == 7 + 11


def test_browser_check_catches_a_broken_page(built, tmp_path):
    """The check above can fail: a page whose script throws, whose plot is never drawn, or that reaches for the
    network is caught."""
    binary = chromium_binary()
    board, _, _, _ = built
    page = board.parent / "broken.html"
    text = (board / "leaderboard.html").read_text(encoding="utf-8")
    text = text.replace("Plotly.newPlot(", "Plotly.noSuchFunction(", 1)
    text = text.replace("</head>", '<link rel="stylesheet" href="http://127.0.0.1:9/x.css"></head>', 1)
    page.write_text(text, encoding="utf-8")
    state, errors = load_page(binary, page, tmp_path / "profile")
    assert any("noSuchFunction" in e for e in errors), errors
    assert any(e.startswith("network request: http://127.0.0.1:9/") for e in errors), errors
    assert len(state["drawn"]) == state["divs"] - 1


# -- wandb ----------------------------------------------------------------------------------------------------------

def test_wandb_summary_run_holds_the_tables_and_figures(built, tmp_path, monkeypatch):
    _, protocol, _, out = built
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the protocol's default: offline
    info = log_leaderboard(protocol=protocol, board="b", group="b-refresh-x", wandb_dir=tmp_path / ".cache",
                           leaderboard=out)
    assert info["mode"] == "offline" and info["group"] == "b-refresh-x"
    run_dir = run_path(info, tmp_path / ".cache")
    run = read_offline_run(run_dir)
    assert run["run"]["job_type"] == "leaderboard" and run["run"]["group"] == "b-refresh-x"
    assert run["config"]["protocol_hash"] == protocol.hash and run["config"]["records"] == out["records"]

    def table(name):
        assert run["summary"][f"{name}/_type"] == "table-file"
        t = json.loads((run_dir / "files" / run["summary"][f"{name}/path"]).read_text())
        return [dict(zip(t["columns"], row)) for row in t["data"]]

    rows = table("leaderboard/table")
    assert len(rows) == len(out["table"]) == 10
    harmful = next(r for r in rows if r["method"] == "harmful" and r["budget"] == "16")
    assert harmful["ref_likelihood/nll:vs_random:mark"] == "▼"
    assert harmful["ref_likelihood/nll"] == pytest.approx(
        out["table"].set_index(["method", "budget"]).loc[("harmful", 16), "ref_likelihood/nll"])
    comps = table("leaderboard/comparisons")
    assert len(comps) == len(out["comparisons"]) and {"row", "budget", "metric", "baseline", "estimate", "ci_low",
                                                      "ci_high", "p_adjusted", "mark"} <= set(comps[0])
    assert {c["baseline"] for c in comps} == {"self", "random", "full"}
    floors = {r["metric"]: r for r in table("leaderboard/noise_floor")}
    assert set(floors) == set(out["noise_floor"]) and "differences below" in floors["ref_likelihood/nll"]["sentence"]
    assert run["summary"]["noise_floor/ref_likelihood/nll/mdd"] == pytest.approx(
        out["noise_floor"]["ref_likelihood/nll"]["mdd"])
    for name in out["figures"]:
        assert run["summary"][f"leaderboard/figures/{name}/_type"] == "plotly-file"
        fig = json.loads((run_dir / "files" / run["summary"][f"leaderboard/figures/{name}/path"]).read_text())
        assert fig["data"]


def test_wandb_disabled_logs_nothing(built, tmp_path, monkeypatch):
    _, protocol, _, out = built
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert log_leaderboard(protocol=protocol, board="b", group="g", wandb_dir=tmp_path / ".cache",
                           leaderboard=out) == {}
    assert not (tmp_path / ".cache").exists()
