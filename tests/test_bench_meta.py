"""benchmarks/bench_meta.py runs end to end (--quick) and reports every available variant."""

from __future__ import annotations

import json
import math

import pytest

from script_loader import load_script

OURS = ("ours, vmap", "ours, loop")
OPTIONAL = {"torchopt, loop": "torchopt", "higher, loop": "higher"}


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_meta.py", "bench_meta")


def test_bench_meta_quick_reports_every_variant(bench, tmp_path, capsys):
    out_file = tmp_path / "meta.json"
    report = bench.main(["--quick", "--json", str(out_file)])
    out = capsys.readouterr().out
    results = report["results"]["relu"]
    assert json.loads(out_file.read_text())["results"]["relu"].keys() == results.keys()

    expected = list(OURS) + [label for label in OPTIONAL if label in results]
    assert list(results) == expected  # ours always; optional ones when importable
    for label, package in OPTIONAL.items():
        if label not in results:
            assert f"skipped: {package} " in out  # a clear reason, e.g. "skipped: torchopt not installed"
    rows = {label: line.strip()[len(label):].split() for line in out.splitlines()
            for label in bench.VARIANTS if line.strip().startswith(label + " ")}
    for label, r in results.items():
        for key in ("median_ms", "min_ms", "max_ms", "peak_mb", "time_vs_a", "memory_vs_a", "meta_loss"):
            assert math.isfinite(r[key]) and r[key] > 0, (label, key, r[key])
        assert rows[label][0] != "skipped:", (label, rows[label])
        assert float(rows[label][0]) == pytest.approx(r["median_ms"], abs=0.06)  # the table's median ms
    assert results["ours, vmap"]["time_vs_a"] == 1.0
    # ours, with and without vmap, compute the same finite second-order meta-gradient (float32)
    for label in OURS:
        assert results[label]["meta_grad_finite"]
        assert results[label]["meta_grad_rel_diff_vs_a"] < 1e-5


def test_missing_optional_packages_are_skipped_with_a_reason(bench, monkeypatch):
    monkeypatch.setattr(bench, "optional_import", lambda name: (None, f"{name} not installed"))
    skipped = {}
    variants = bench.build_variants("relu", tasks=2, inner_steps=1, inner_lr=0.01, seed=0, skipped=skipped)
    assert list(variants) == list(OURS)
    assert skipped == {"torchopt, loop": "torchopt not installed", "higher, loop": "higher not installed"}
