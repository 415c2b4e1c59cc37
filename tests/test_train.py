import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from dlbook.runtime import seed_everything
from dlbook.train import (
    Checkpoint,
    EarlyStopping,
    StepLog,
    accuracy,
    amp_dtype,
    default_step,
    device_batches,
    evaluate,
    fit,
    make_batches,
)

CPU = torch.device("cpu")


def blobs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    return TensorDataset(centers[y] + torch.randn(n, 2, generator=g), y)


def make_model():
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def acc():
    return {"acc": MulticlassAccuracy(num_classes=3, average="micro")}  # what accuracy(3) returns


def test_fit_learns_and_records_history():
    seed_everything(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    h = fit(model, blobs(), val_data=blobs(seed=1), optimizer=opt, epochs=8, metrics=acc(), device=CPU, progress=False)
    assert len(h) == 8 and h["epoch"] == list(range(1, 9))
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "train_seconds"} <= set(h.keys())
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h.last["val_acc"] > 0.95
    assert h["train_seconds"] == sorted(h["train_seconds"])


def test_fit_is_reproducible_on_cpu():
    runs = []
    for _ in range(2):
        seed_everything(0)
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        runs.append(fit(model, blobs(), optimizer=opt, epochs=3, device=CPU, progress=False)["train_loss"])
    assert runs[0] == runs[1]


def test_plateau_scheduler_is_stepped_with_val_loss():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # An impossible improvement threshold: every epoch counts as a plateau.
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=10.0)
    h = fit(model, blobs(), val_data=blobs(seed=1), optimizer=opt, scheduler=sched, epochs=4, device=CPU, progress=False)
    assert h["lr"] == [0.1, 0.05, 0.025, 0.0125]


def test_plateau_without_val_data_is_an_error():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    with pytest.raises(ValueError, match="val_data"):
        fit(model, blobs(), optimizer=opt, scheduler=sched, epochs=1, device=CPU, progress=False)


def test_batch_scheduler_steps_every_batch():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    fit(model, blobs(n=100), optimizer=opt, scheduler=sched, scheduler_step="batch", batch_size=25, epochs=1, device=CPU, progress=False)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5**4)


def test_stop_at_target_ends_early():
    seed_everything(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    h = fit(model, blobs(), val_data=blobs(seed=1), optimizer=opt, epochs=50, metrics=acc(), device=CPU,
            progress=False, stop_at=("val_acc", 0.9))
    assert len(h) < 50 and h.last["val_acc"] >= 0.9


def test_grad_clip_bounds_the_update():
    model = nn.Linear(2, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    data = TensorDataset(torch.randn(8, 2) * 1e4, torch.zeros(8, dtype=torch.long))
    fit(model, data, optimizer=opt, epochs=1, batch_size=8, grad_clip=1e-3, device=CPU, progress=False)
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert step.item() <= 1e-3 + 1e-9


def test_device_batches_cover_every_sample_once_per_pass():
    x = torch.arange(10).float().unsqueeze(1)
    batches = device_batches((x, torch.arange(10)), 3, CPU, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = torch.cat([b[1] for b in batches()])
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(b[0]) for b in batches()] == [3, 3, 3, 1]


class ListDataset(Dataset):
    def __init__(self, data: TensorDataset):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def test_non_tensor_datasets_go_through_a_dataloader_with_same_result():
    data = blobs(n=64)
    model = make_model()
    direct = evaluate(model, data, device=CPU)
    loaded = evaluate(model, ListDataset(data), device=CPU)
    assert direct["loss"] == pytest.approx(loaded["loss"], rel=1e-6)
    batches = make_batches(ListDataset(data), 16, CPU, shuffle=False)
    assert sum(len(b[0]) for b in batches()) == 64


def test_evaluate_restores_training_mode():
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5))
    model.train()
    evaluate(model, blobs(n=10), device=CPU)
    assert model.training


def test_amp_policy():
    assert amp_dtype(CPU, None) is None
    assert amp_dtype(CPU, False) is None
    assert amp_dtype(CPU, True) == torch.bfloat16
    assert amp_dtype(torch.device("cuda"), False) is None


def test_amp_on_cpu_trains_in_bfloat16():
    seed_everything(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    h = fit(model, blobs(), val_data=blobs(seed=1), optimizer=opt, epochs=5, metrics=acc(), device=CPU, amp=True, progress=False)
    assert h.last["val_acc"] > 0.9
    assert all(p.dtype == torch.float32 for p in model.parameters()), "autocast must leave master weights in float32"


def test_bad_scheduler_step_value():
    model = make_model()
    with pytest.raises(ValueError, match="scheduler_step"):
        fit(model, blobs(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, scheduler_step="step", progress=False)


# --- batch steps, several tensors per batch ---------------------------------------------------------


class MaskedMean(nn.Module):
    """Takes (x, mask): the mask zeroes features, so a model that ignored it would score differently."""

    def __init__(self):
        super().__init__()
        self.net = make_model()

    def forward(self, x, mask):
        return self.net(x * mask)


def three_tensors(n=400, seed=0):
    x, y = blobs(n, seed).tensors
    mask = torch.ones_like(x)
    mask[:, 1] = 0  # hide the second feature
    return x, mask, y


def test_make_batches_keeps_every_tensor_of_a_triple():
    data = three_tensors(n=50)
    for batches in (make_batches(data, 16, CPU, shuffle=True, generator=torch.Generator().manual_seed(0)),
                    make_batches(TensorDataset(*data), 16, CPU, shuffle=False, device_budget=0),  # a DataLoader
                    make_batches(ListDataset(TensorDataset(*data)), 16, CPU, shuffle=False)):
        got = list(batches())
        assert all(len(b) == 3 for b in got) and sum(len(b[0]) for b in got) == 50
        assert all(torch.equal(b[1][:, 1], torch.zeros(len(b[0]))) for b in got)


def test_default_step_calls_the_model_with_every_input_and_targets_the_last():
    model = MaskedMean()
    x, mask, y = three_tensors(n=8)
    out, target = default_step(model, (x, mask, y))
    assert torch.equal(out, model.net(x * mask)) and target is y


def test_fit_and_evaluate_pass_every_input_to_the_model():
    seed_everything(0)
    model = MaskedMean()
    h = fit(model, three_tensors(), val_data=three_tensors(seed=1), optimizer=torch.optim.Adam(model.parameters(), 1e-2),
            epochs=3, metrics=accuracy(3), device=CPU, progress=False)
    direct = evaluate(model, three_tensors(seed=1), metrics=accuracy(3), device=CPU)
    assert h.last["val_acc"] == pytest.approx(direct["acc"]) and h.last["val_loss"] == pytest.approx(direct["loss"])
    x, mask, y = three_tensors(seed=1)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model.net(x * mask), y).item()
    assert direct["loss"] == pytest.approx(expected, rel=1e-6)


class TupleModel(nn.Module):
    """Returns (logits, extra) like an attention classifier: the default step cannot score it."""

    def __init__(self):
        super().__init__()
        self.net = make_model()

    def forward(self, x):
        logits = self.net(x)
        return logits, logits.softmax(-1)


def logits_step(model, batch):
    x, y = batch
    return model(x)[0], y


def test_a_step_adapts_a_model_that_returns_a_tuple():
    seed_everything(0)
    model = TupleModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises((TypeError, AttributeError)):  # without the step, the loss gets a tuple
        fit(model, blobs(), optimizer=opt, epochs=1, device=CPU, progress=False)
    h = fit(model, blobs(), val_data=blobs(seed=1), optimizer=opt, epochs=5, metrics=accuracy(3), step=logits_step,
            device=CPU, progress=False)
    assert h.last["val_acc"] > 0.9
    assert evaluate(model, blobs(seed=1), step=logits_step, metrics=accuracy(3), device=CPU)["acc"] == pytest.approx(h.last["val_acc"])


def test_a_step_may_return_a_ready_loss_and_loss_fn_is_not_called():
    def never(output, target):
        raise AssertionError("loss_fn must not be called for a ready loss")

    def mse_step(model, batch):  # a loss that needs three tensors: a per-example weight
        x, w, y = batch
        return (w * (model(x).squeeze(1) - y) ** 2).mean()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    data = (x, torch.ones(256), y)
    seed_everything(0)
    model = nn.Linear(3, 1)
    h = fit(model, data, val_data=data, optimizer=torch.optim.Adam(model.parameters(), 5e-2), epochs=20,
            step=mse_step, loss_fn=never, batch_size=32, device=CPU, progress=False)
    assert h.last["val_loss"] < 1e-2 < h["train_loss"][0]
    assert evaluate(model, data, step=mse_step, loss_fn=never, device=CPU)["loss"] == pytest.approx(h.last["val_loss"])
    with pytest.raises(ValueError, match="metrics"):
        fit(model, data, optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=1, step=mse_step,
            metrics=accuracy(3), device=CPU, progress=False)


def test_a_step_returning_a_non_scalar_tensor_is_an_error():
    model = make_model()
    with pytest.raises(ValueError, match="scalar"):
        fit(model, blobs(n=20), optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=1,
            step=lambda m, b: m(b[0]), device=CPU, progress=False)


def test_train_data_may_be_a_function_returning_batches():
    calls = []

    def stream():
        calls.append(1)
        g = torch.Generator().manual_seed(len(calls))
        for _ in range(5):
            x, y = blobs(n=20, seed=int(torch.randint(1000, (1,), generator=g))).tensors
            yield x, y

    seed_everything(0)
    model = make_model()
    log = StepLog()
    h = fit(model, stream, optimizer=torch.optim.Adam(model.parameters(), 1e-2), epochs=3, callbacks=[log],
            device=CPU, progress=False)
    assert len(calls) == 3 and len(h) == 3 and len(log) == 15, "called once per epoch, every batch one step"


# --- max_steps ---------------------------------------------------------------------------------------


class CountingSGD(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.count = 0

    def step(self, closure=None):
        self.count += 1
        return super().step(closure)


def test_max_steps_stops_inside_an_epoch():
    model = make_model()
    opt = CountingSGD(model.parameters(), lr=0.1)
    h = fit(model, blobs(n=100), val_data=blobs(n=50, seed=1), optimizer=opt, epochs=10, batch_size=10, max_steps=25,
            device=CPU, progress=False)
    assert opt.count == 25
    assert len(h) == 3 and "val_loss" in h.last, "the partial third epoch is recorded and validated"


def test_max_steps_on_an_endless_stream():
    def endless():
        while True:
            yield blobs(n=8).tensors

    model = make_model()
    opt = CountingSGD(model.parameters(), lr=0.1)
    fit(model, endless, optimizer=opt, epochs=1, max_steps=7, device=CPU, progress=False)
    assert opt.count == 7
    with pytest.raises(ValueError, match="max_steps"):
        fit(model, endless, optimizer=opt, epochs=1, max_steps=0, device=CPU, progress=False)


# --- callbacks ----------------------------------------------------------------------------------------


def test_every_callback_sees_each_epoch_and_any_can_stop():
    seen_a, seen_b = [], []

    def stop_after_two(record, model):
        seen_a.append(record["epoch"])
        return record["epoch"] >= 2

    def watch(record, model):
        seen_b.append(dict(record))

    model = make_model()
    h = fit(model, blobs(n=50), val_data=blobs(n=20, seed=1), optimizer=torch.optim.SGD(model.parameters(), 0.1),
            epochs=10, callbacks=[stop_after_two, watch], device=CPU, progress=False)
    assert len(h) == 2 and seen_a == [1, 2]
    assert [r["epoch"] for r in seen_b] == [1, 2] and "val_loss" in seen_b[0], "the second callback still sees epoch 2"


def snapshots():
    """A callback that keeps a copy of the weights after every epoch."""
    states = {}

    def keep(record, model):
        states[record["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    return states, keep


def same_state(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_stops_and_restores_the_best_weights():
    seed_everything(0)
    model = make_model()
    states, keep = snapshots()
    # Training lowers the validation loss every epoch, so "max" mode sees its best at epoch 1 and then
    # only worse epochs: it must stop after `patience` of them and put epoch 1's weights back.
    stopper = EarlyStopping(monitor="val_loss", patience=2, mode="max")
    h = fit(model, blobs(), val_data=blobs(seed=1), optimizer=torch.optim.Adam(model.parameters(), 1e-2), epochs=20,
            callbacks=[keep, stopper], device=CPU, progress=False)
    assert len(h) == 3 and stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    assert h["val_loss"][2] < h["val_loss"][0]
    assert same_state(model.state_dict(), states[1]) and not same_state(model.state_dict(), states[3])
    assert stopper.best == pytest.approx(h["val_loss"][0])


def test_early_stopping_lets_an_improving_run_finish_and_keeps_its_best_epoch():
    seed_everything(0)
    model = make_model()
    states, keep = snapshots()
    stopper = EarlyStopping(monitor="val_acc", patience=3, mode="max")
    h = fit(model, blobs(), val_data=blobs(seed=1), optimizer=torch.optim.Adam(model.parameters(), 1e-2), epochs=6,
            metrics=accuracy(3), callbacks=[keep, stopper], device=CPU, progress=False)
    assert len(h) == 6 and stopper.stopped_epoch is None
    best = max(range(6), key=lambda i: (h["val_acc"][i], -i)) + 1  # first epoch with the best accuracy
    assert stopper.best_epoch == best and same_state(model.state_dict(), states[best])


def test_early_stopping_checks_its_arguments():
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="lowest")
    model = make_model()
    with pytest.raises(KeyError, match="val_loss"):  # no val_data: nothing to monitor
        fit(model, blobs(n=20), optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=1,
            callbacks=[EarlyStopping()], device=CPU, progress=False)


def test_early_stopping_with_min_delta_and_plain_records():
    stopper, model = EarlyStopping("val_loss", patience=2, min_delta=0.1), make_model()
    decisions = [stopper({"epoch": e, "val_loss": v}, model) for e, v in enumerate([1.0, 0.95, 0.85, 0.8, 0.78], 1)]
    assert decisions == [False, False, False, False, True], "0.95, 0.8 and 0.78 do not beat the best by 0.1"
    assert stopper.best == 0.85 and stopper.best_epoch == 3


def test_checkpoint_saves_the_best_epoch(tmp_path):
    seed_everything(0)
    model = make_model()
    states, keep = snapshots()
    path = tmp_path / "sub" / "best.pt"
    ckpt = Checkpoint(path, monitor="val_acc", mode="max")
    h = fit(model, blobs(), val_data=blobs(seed=1), optimizer=torch.optim.Adam(model.parameters(), 1e-2), epochs=5,
            metrics=accuracy(3), callbacks=[keep, ckpt], device=CPU, progress=False)
    best = max(range(5), key=lambda i: (h["val_acc"][i], -i)) + 1
    assert ckpt.best_epoch == best and ckpt.best == pytest.approx(max(h["val_acc"]))
    assert same_state(torch.load(path), states[best])
    every = Checkpoint(tmp_path / "last.pt", monitor=None)
    fit(model, blobs(n=20), optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=2, callbacks=[every],
        device=CPU, progress=False)
    assert every.best_epoch == 2 and same_state(torch.load(tmp_path / "last.pt"), model.state_dict())


def test_step_log_records_every_step_and_the_gradient_norm_before_clipping():
    seed_everything(0)
    model = make_model()
    log = StepLog()
    h = fit(model, blobs(n=100), optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=2, batch_size=25,
            grad_clip=1e-3, callbacks=[log], device=CPU, progress=False)
    assert log["step"] == list(range(1, 9)) and log["epoch"] == [1] * 4 + [2] * 4
    assert sum(log["loss"][:4]) / 4 == pytest.approx(h["train_loss"][0], rel=1e-6)
    assert min(log["grad_norm"]) > 1e-3, "the norm is measured before clipping"
    no_clip = StepLog()
    fit(model, blobs(n=100), optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=1, batch_size=25,
        callbacks=[no_clip], device=CPU, progress=False)
    assert "grad_norm" not in no_clip.keys()


def test_step_log_stops_at_a_non_finite_loss():
    calls = []

    def blows_up_at_3(model, batch):
        calls.append(1)
        out, y = default_step(model, batch)
        return out * (math.nan if len(calls) == 3 else 1.0), y

    model = make_model()
    log = StepLog(stop_nonfinite=True)
    h = fit(model, blobs(n=100), optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=5, batch_size=10,
            step=blows_up_at_3, grad_clip=math.inf, callbacks=[log], device=CPU, progress=False)
    assert len(log) == 3 and math.isnan(log.last["loss"]) and len(h) == 1


def test_on_step_may_evaluate_the_model_and_training_mode_comes_back():
    modes = []

    class Probe:
        def on_step(self, record, model):
            evaluate(model, blobs(n=10), device=CPU)
            model.eval()  # even a callback that leaves the model in eval mode

        def __call__(self, record, model):
            return False

    def step(model, batch):
        modes.append(model.training)
        return default_step(model, batch)

    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5))
    fit(model, blobs(n=40), optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=1, batch_size=10, step=step,
        callbacks=[Probe()], device=CPU, progress=False)
    assert modes == [True] * 4


def test_accuracy_helper_is_micro_averaged():
    metric = accuracy(3)["acc"]
    preds = torch.tensor([0, 0, 0, 0, 1, 2])  # 5 of 6 right; per class: 4 of 4 and 1 of 2
    target = torch.tensor([0, 0, 0, 0, 1, 1])
    assert float(metric(preds, target)) == pytest.approx(5 / 6)  # macro averaging would give (1 + 0.5) / 2


def test_time_in_step_hooks_is_not_training_time():
    """fit leaves its on_step hooks (evaluations every few steps) out of train_seconds, and tells
    each hook the training time so far."""
    import time as _time

    class SlowHook:
        seen: list[float] = []

        def on_step(self, record, model):
            self.seen.append(record["train_seconds"])
            _time.sleep(0.05)

        def __call__(self, record, model):
            return False

    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    hook = SlowHook()
    start = _time.perf_counter()
    model = torch.nn.Linear(4, 2)
    history = fit(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=8,
                  progress=False, callbacks=[hook], device=torch.device("cpu"))
    wall = _time.perf_counter() - start
    assert len(hook.seen) == 8 and hook.seen == sorted(hook.seen)
    assert wall >= 8 * 0.05
    assert history.last["train_seconds"] < wall - 7 * 0.05  # the 0.4 s of sleeping is not in it
    assert hook.seen[-1] <= history.last["train_seconds"]
