"""The benchmark script runs end to end (its --quick mode) and reports every variant."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_step.py"


def test_bench_step_quick_runs(capsys):
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--optimizers", "sgd", "--sets", "big", "--iters", "2"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith(("torch ", "ours "))]
    labels = {" ".join(line.split()[:2]) for line in rows}
    assert labels == {"torch for-loop", "torch foreach", "torch fused", "torch compiled",
                      "ours eager", "ours compiled"}
    for line in rows:  # a positive median time on every row
        assert float(line.split()[2]) > 0
