import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from dlbook.runtime import seed_everything
from dlbook.train import amp_dtype, device_batches, evaluate, fit, make_batches

CPU = torch.device("cpu")


def blobs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    return TensorDataset(centers[y] + torch.randn(n, 2, generator=g), y)


def make_model():
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def acc():
    return {"acc": MulticlassAccuracy(num_classes=3, average="micro")}


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
