"""benchmarks/bench_step.py runs end to end (--quick), reports every variant and writes --json."""

from __future__ import annotations

import json

from script_loader import load_script

VARIANTS = ["torch for-loop", "torch foreach", "torch fused", "torch compiled", "ours eager", "ours compiled"]
EXPECTED = {"sgd": VARIANTS + ["triad"], "clip": VARIANTS + ["torch fused adam (no clip)", "triad"]}


def test_bench_step_quick_reports_every_variant(tmp_path, capsys):
    bench = load_script("benchmarks/bench_step.py", "bench_step")
    out_file = tmp_path / "step.json"
    report = bench.main(["--quick", "--optimizers", "sgd", "clip", "--sets", "big",
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
    assert summary["ratios"]["sgd"]["eager/fused"] > 0
    assert summary["clip_compiled_over_torch_fused_adam"] > 0
    assert data["results"] == json.loads(json.dumps(report["results"]))
