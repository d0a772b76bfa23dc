"""benchmarks/bench_step.py runs end to end (--quick), reports every variant and writes --json."""

from __future__ import annotations

import json
import sys

from script_loader import load_script

VARIANTS = ["torch for-loop", "torch foreach", "torch fused", "torch compiled", "ours eager", "ours compiled"]
# clip's table has every variant (and the fused-Adam reference): one optimizer keeps it to two compiles
EXPECTED = {"clip": VARIANTS + ["torch fused adam (no clip)", "triad"]}


def test_bench_step_quick_reports_every_variant(tmp_path, capsys):
    bench = load_script("benchmarks/bench_step.py", "bench_step")
    out_file = tmp_path / "step.json"
    report = bench.main(["--quick", "--optimizers", "clip", "--sets", "big",
                         "--rounds", "2", "--iters", "2", "--json", str(out_file)])
    out = capsys.readouterr().out

    # the printed tables: one row per variant, each with a positive median time
    for name, labels in EXPECTED.items():
        table = out.split(f"\nbig / {name} ")[1].split("\n\n")[0]
        rows = {}
        for line in table.splitlines():
            label = max((lb for lb in labels if line.strip().startswith(lb + " ")), key=len, default=None)
            if label is not None:
                rows[label] = line.strip()[len(label):].split()
        assert sorted(rows) == sorted(labels)
        for label, cells in rows.items():
            assert float(cells[0]) > 0, (name, label)
    assert "Summary" in out and "clip chain compiled / torch fused Adam" in out

    # the JSON: the same entries, parseable, with per-round times and compile times
    data = json.loads(out_file.read_text())
    assert data["torch"] and data["threads"] >= 1 and data["date"]
    assert data["rounds"] == 2 and data["iters"] == 2
    for name, labels in EXPECTED.items():
        variants = data["results"]["big"]["optimizers"][name]["variants"]
        assert list(variants) == labels
        for label, v in variants.items():
            assert v["median_ms"] > 0 and v["gbps"] > 0 and len(v["rounds"]) == 2, (name, label)
            assert (v["cold_s"] is not None and v["cold_s"] > 0) == (label in ("torch compiled", "ours compiled"))
        assert variants["ours compiled"]["note"] in ("flat buffers", "")  # one graph on flat buffers
    summary = data["summary"]["big"]
    assert summary["ratios"]["clip"]["eager/fused"] > 0
    assert summary["clip_compiled_over_torch_fused_adam"] > 0
    assert data["results"] == json.loads(json.dumps(report["results"]))


TIMM_ROWS = ["timm", "timm foreach", "ours eager", "ours compiled", "triad"]


def test_bench_step_timm_choice_without_timm(monkeypatch, capsys):
    """A timm choice runs without timm importable: our variants are timed, timm's rows are
    reported unavailable with the reason (never an error), and timm is not imported."""
    monkeypatch.setenv("BENCH_STEP_NO_TIMM", "1")  # honoured by benchmarks/timm_reference.py
    had_timm = "timm" in sys.modules
    bench = load_script("benchmarks/bench_step.py", "bench_step")
    monkeypatch.setattr(bench, "_git_commit", lambda: None)  # not what this test is about
    monkeypatch.setattr(bench, "warm_inductor", lambda: None)  # (the other test covers them): faster
    report = bench.main(["--quick", "--optimizers", "timm_rmsproptf", "--sets", "big",
                         "--rounds", "1", "--iters", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert ("timm" in sys.modules) == had_timm

    table = out.split("\nbig / timm_rmsproptf ")[1].split("\n\n")[0]
    rows = {}
    for line in table.splitlines():
        label = max((lb for lb in TIMM_ROWS if line.strip().startswith(lb + " ")), key=len, default=None)
        if label is not None:
            rows[label] = line.strip()[len(label):].split()
    assert sorted(rows) == sorted(TIMM_ROWS)
    for label in ("ours eager", "ours compiled", "triad"):
        assert float(rows[label][0]) > 0, label
    for label in ("timm", "timm foreach"):
        assert rows[label][0] == "-" and "unavailable: timm disabled by BENCH_STEP_NO_TIMM" in " ".join(rows[label])

    variants = report["results"]["big"]["optimizers"]["timm_rmsproptf"]["variants"]
    assert list(variants) == TIMM_ROWS
    assert variants["ours compiled"]["cold_s"] > 0 and variants["timm"]["median_ms"] is None
    summary = report["summary"]["big"]
    assert summary["ratios"] == {} and summary["timm"]["timm_rmsproptf"]["compiled/timm"] is None
    assert summary["timm"]["timm_rmsproptf"]["cold_s"] > 0
    assert report["timm_version"] is None
    assert "compiled/timm" in out.split("Summary")[1] and "n/a (--quick)" in out
