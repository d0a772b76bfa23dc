"""adapters.LearningRateFinder: MONAI's range test on a small regression problem.

The recorded history is checked against an independent re-run of MONAI's procedure
(and against MONAI itself when it is installed); divergence stops the test; the steepest
gradient is numpy.gradient's argmin; plot() renders a PNG; model and optimizer state
afterwards equal the state before (and training continues identically).
"""

from __future__ import annotations

import copy
import gc
import os

import pytest
import torch

import functional_optim as fo
from adapters import FunctionalOptimizer, LearningRateFinder


def _data(n=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen)
    y = x @ torch.randn(5, 1, generator=gen) + 0.1 * torch.randn(n, 1, generator=gen)
    return torch.utils.data.TensorDataset(x, y)


def _loader(seed=0, batch_size=16):
    return torch.utils.data.DataLoader(_data(seed=seed), batch_size=batch_size, shuffle=False)


def _model(seed=0, batchnorm=False):
    torch.manual_seed(seed)
    if batchnorm:
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return torch.nn.Linear(5, 1)


def _simulate(model, lr_at, loader, num_iter, smooth_f=0.05, diverge_th=5, accumulation_steps=1, val_loader=None):
    """MONAI's range test written out independently (torch SGD, lr set before each step)."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr_at(0))
    crit = torch.nn.MSELoss()
    batches = (b for _ in range(10 ** 6) for b in loader)
    lrs, losses, best = [], [], None
    for i in range(num_iter):
        opt.param_groups[0]["lr"] = lr_at(i)
        model.train()
        opt.zero_grad()
        total = 0.0
        for _ in range(accumulation_steps):
            x, y = next(batches)
            loss = crit(model(x), y) / accumulation_steps
            loss.backward()
            total += loss.item()
        opt.step()
        loss = total
        if val_loader is not None:
            model.eval()
            with torch.no_grad():
                loss = sum(crit(model(x), y).item() * len(y) for x, y in val_loader) / len(val_loader.dataset)
        lrs.append(lr_at(i))
        if i == 0:
            best = loss
        else:
            if smooth_f > 0:
                loss = smooth_f * loss + (1 - smooth_f) * losses[-1]
            best = min(best, loss)
        losses.append(loss)
        if loss > diverge_th * best:
            break
    return lrs, losses


@pytest.mark.parametrize("mode,extra", [
    ("exp", dict()),
    ("exp", dict(accumulation_steps=2, smooth_f=0.2)),
    ("linear", dict(val_loader=True, smooth_f=0.0)),
], ids=["exp", "exp-accumulate", "linear-validation"])
def test_history_follows_monai_procedure(mode, extra):
    num_iter, start, end = 25, 1e-3, 0.5
    val = _loader(seed=1) if extra.pop("val_loader", False) else None
    model = _model()
    finder = LearningRateFinder(model, torch.optim.SGD(model.parameters(), lr=start), torch.nn.MSELoss(),
                                verbose=False)
    finder.range_test(_loader(), val_loader=val, end_lr=end, num_iter=num_iter, step_mode=mode, diverge_th=1e9,
                      **extra)
    lr_at = (fo.exponential_range_schedule if mode == "exp" else fo.linear_range_schedule)(start, end, num_iter)
    lrs, losses = _simulate(_model(), lr_at, _loader(), num_iter, diverge_th=1e9, val_loader=val, **extra)
    assert len(finder.history["lr"]) == num_iter
    expected = [start * (end / start) ** (i / (num_iter - 1)) if mode == "exp"
                else start + i / (num_iter - 1) * (end - start) for i in range(num_iter)]  # MONAI's formulas
    torch.testing.assert_close(torch.tensor(finder.history["lr"], dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert finder.history["lr"] == lrs
    torch.testing.assert_close(torch.tensor(finder.history["loss"]), torch.tensor(losses), rtol=1e-6, atol=0)


def test_stops_on_divergence_and_steepest_gradient_is_documented_point():
    np = pytest.importorskip("numpy")
    model = _model()
    finder = LearningRateFinder(model, torch.optim.SGD(model.parameters(), lr=1e-4), torch.nn.MSELoss(),
                                verbose=False)
    finder.range_test(_loader(), end_lr=100.0, num_iter=80)
    lrs, losses = finder.history["lr"], finder.history["loss"]
    assert 2 < len(lrs) < 80  # stopped early
    assert losses[-1] > 5 * min(losses[:-1]) and all(
        loss <= 5 * min(losses[:i + 1]) for i, loss in enumerate(losses[:-1]))
    exp_lrs, exp_losses = _simulate(_model(), fo.exponential_range_schedule(1e-4, 100.0, 80), _loader(), 80)
    assert lrs == exp_lrs and len(losses) == len(exp_losses)
    # the diverging point is dropped; steepest = argmin of numpy.gradient over the rest
    kept_lrs, kept_losses = finder.get_lrs_and_losses()
    assert kept_lrs == lrs[:-1] and kept_losses == losses[:-1]
    idx = int(np.gradient(np.array(kept_losses)).argmin())
    assert finder.get_steepest_gradient() == (kept_lrs[idx], kept_losses[idx])
    idx = int(np.gradient(np.array(losses[2:-3]))[:].argmin())
    assert finder.get_steepest_gradient(skip_start=2, skip_end=2) == (lrs[2 + idx], losses[2 + idx])


def test_steepest_gradient_edge_cases(capsys):
    model = _model()
    finder = LearningRateFinder(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(), verbose=False)
    finder.history = {"lr": [1.0, 2.0, 3.0, 4.0, 5.0], "loss": [5.0, 4.0, 1.0, 0.5, 9.0]}
    assert finder.get_steepest_gradient() == (2.0, 4.0)  # gradient [-1, -2, -1.75, -0.5]: index 1
    finder.history = {"lr": [1.0, 2.0], "loss": [1.0, 0.5]}
    assert finder.get_steepest_gradient() == (None, None)
    assert "might not be enough points" in capsys.readouterr().out
    with pytest.raises(ValueError, match="skip_start"):
        finder.get_lrs_and_losses(skip_start=-1)
    with pytest.raises(ValueError, match="skip_end"):
        finder.get_steepest_gradient(skip_end=-1)


def _warm(model, opt, steps=3):
    for x, y in list(_loader(seed=2))[:steps]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


OPTIMIZERS = {
    "torch-adam": lambda ps: torch.optim.Adam(ps, lr=1e-3, amsgrad=True),
    "torch-sgd-fresh": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
    "functional-adamw": lambda ps: FunctionalOptimizer(ps, fo.adamw, lr=1e-3, weight_decay=0.1),
}


@pytest.mark.parametrize("memory_cache", [True, False], ids=["memory", "files"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_model_and_optimizer_state_restored_exactly(name, memory_cache, tmp_path):
    def make():
        model = _model(batchnorm=True)
        opt = OPTIMIZERS[name](model.parameters())
        if name != "torch-sgd-fresh":
            _warm(model, opt)
        model.eval()  # a mode to restore too
        return model, opt

    model, opt = make()
    twin_model, twin_opt = make()
    before_model = copy.deepcopy(model.state_dict())
    before_opt = copy.deepcopy(opt.state_dict())
    finder = LearningRateFinder(model, opt, torch.nn.MSELoss(), memory_cache=memory_cache,
                                cache_dir=str(tmp_path), verbose=False)
    if not memory_cache:
        assert len(os.listdir(tmp_path)) == 2
    finder.range_test(_loader(), end_lr=100.0, num_iter=20)
    assert len(finder.history["lr"]) > 2
    after_model, after_opt = model.state_dict(), opt.state_dict()
    assert before_model.keys() == after_model.keys()
    assert all(torch.equal(before_model[k], after_model[k]) for k in before_model)
    assert before_opt["param_groups"] == after_opt["param_groups"]  # no 'initial_lr' left behind
    assert before_opt["state"].keys() == after_opt["state"].keys()
    for idx, entry in before_opt["state"].items():
        assert entry.keys() == after_opt["state"][idx].keys()
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(after_opt["state"][idx][k])) for k, v in entry.items())
    assert not model.training and "step" not in vars(opt)  # mode restored, scheduler's patch undone
    # training goes on exactly as for an identical model/optimizer that never saw the test
    model.train(), twin_model.train()
    _warm(model, opt), _warm(twin_model, twin_opt)
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)
    LearningRateFinder(model, opt, torch.nn.MSELoss(), verbose=False)  # no scheduler attached any more
    if not memory_cache:
        del finder
        gc.collect()
        assert os.listdir(tmp_path) == []  # cache files removed


def test_plot_renders_png(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = _model()
    finder = LearningRateFinder(model, torch.optim.SGD(model.parameters(), lr=1e-4), torch.nn.MSELoss(),
                                verbose=False)
    finder.range_test(_loader(), end_lr=100.0, num_iter=60)
    path = tmp_path / "lr_finder.png"
    ax = finder.plot(save_path=path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 5000
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "Learning rate" and ax.get_ylabel() == "Loss"
    lrs, losses = finder.get_lrs_and_losses()
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == lrs and list(line.get_ydata()) == losses
    steepest = finder.get_steepest_gradient()
    assert [tuple(o) for o in ax.collections[0].get_offsets()] == [steepest]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["steepest gradient"]
    fig, given = plt.subplots()
    assert finder.plot(ax=given, log_lr=False, steepest_lr=False) is given
    assert given.get_xscale() == "linear" and not given.collections
    plt.close(fig)
    shown = finder.plot()  # pyplot figure, plt.show() (a no-op under Agg)
    assert shown.get_lines()
    plt.close("all")


def test_progress_bar_and_messages_follow_verbose(capsys):
    pytest.importorskip("tqdm")
    model = _model()
    finder = LearningRateFinder(model, torch.optim.SGD(model.parameters(), lr=1e-4), torch.nn.MSELoss())
    finder.range_test(_loader(), end_lr=100.0, num_iter=60)
    out, err = capsys.readouterr()
    assert "Computing optimal learning rate" in err and ("it/s" in err or "s/it" in err)
    assert "Stopping early, the loss has diverged" in out + err and "Resetting model and optimizer" in out
    finder.verbose = False
    finder.range_test(_loader(), end_lr=100.0, num_iter=10)
    assert capsys.readouterr() == ("", "")


def test_matches_monai_when_installed():
    monai_opt = pytest.importorskip("monai.optimizers")
    results = []
    for cls in (monai_opt.LearningRateFinder, LearningRateFinder):
        model = _model()
        finder = cls(model, torch.optim.SGD(model.parameters(), lr=1e-4), torch.nn.MSELoss(), verbose=False)
        finder.range_test(_loader(), end_lr=100.0, num_iter=60, accumulation_steps=2)
        results.append((finder.history, finder.get_steepest_gradient(skip_start=1),
                        [float(v) for v in model.state_dict()["weight"].flatten()]))
    assert results[0] == results[1]


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(num_iter=1), ValueError, "num_iter"),
    (dict(step_mode="cubic"), ValueError, "step_mode"),
    (dict(smooth_f=1.0), ValueError, "smooth_f"),
    (dict(accumulation_steps=0), ValueError, "accumulation_steps"),
    (dict(start_lr=[0.1, 0.2]), ValueError, "start_lr"),
])
def test_bad_arguments(kwargs, error, match):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    finder = LearningRateFinder(model, opt, torch.nn.MSELoss(), verbose=False)
    with pytest.raises(error, match=match):
        finder.range_test(_loader(), **kwargs)
    assert opt.param_groups[0]["lr"] == 0.1 and "initial_lr" not in opt.param_groups[0]
    torch.optim.lr_scheduler.StepLR(opt, 10)
    with pytest.raises(RuntimeError, match="scheduler attached"):
        LearningRateFinder(model, opt, torch.nn.MSELoss())
    with pytest.raises(TypeError, match="optimizer"):
        LearningRateFinder(model, object(), torch.nn.MSELoss())
