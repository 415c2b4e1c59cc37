"""Optimization lesson: training fast (dlbook/perf.py, chapters/optimization/speed.ipynb).

The hand count of a training step's FLOPs must equal torch.utils.flop_counter exactly (the planted
bug, the "6 x MACs" rule, must miss by the first layer's input gradient), the timers and the
throughput measurement must count what they claim, and the peak table and MFU must be consistent.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dlbook.perf as perf
from dlbook.models import LeNet5
from dlbook.perf import layer_macs
from dlbook.train import device_batches


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("make", [perf.SpeedrunCNN, LeNet5, lambda: perf.SpeedrunCNN(channels_last=True)],
                         ids=["speedrun", "lenet5", "speedrun-nhwc"])
@pytest.mark.parametrize("batch", [1, 16])
def test_hand_flops_equal_flop_counter(make, batch: int) -> None:
    torch.manual_seed(0)
    model = make()
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    counted, per_op = perf.counted_flops(lambda: _step(model, x, y))
    by_hand = perf.train_step_flops(model, (batch, 1, 28, 28))
    assert counted == by_hand["total"]
    assert per_op["convolution"] + per_op["addmm"] == by_hand["forward"]


def test_six_macs_rule_is_off_by_the_first_layer() -> None:
    """Planted bug: 6 x MACs counts an input gradient for the first layer, which autograd never computes."""
    model = perf.SpeedrunCNN()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    counted, _ = perf.counted_flops(lambda: _step(model, x, y))
    macs = layer_macs(model, (8, 1, 28, 28))
    assert 6 * sum(macs.values()) != counted
    assert 6 * sum(macs.values()) - counted == 2 * macs["conv1"]


def test_forward_only_count() -> None:
    model = perf.SpeedrunCNN().eval()
    with torch.no_grad():
        counted, _ = perf.counted_flops(lambda: model(torch.randn(4, 1, 28, 28)))
    assert counted == perf.train_step_flops(model, (4, 1, 28, 28))["forward"]


def test_channels_last_model_computes_the_same() -> None:
    torch.manual_seed(0)
    a = perf.SpeedrunCNN()
    b = perf.SpeedrunCNN(channels_last=True)
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


def test_per_sample_pipeline_reproduces_preprocessed_images() -> None:
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (5, 28, 28), generator=gen, dtype=torch.uint8)
    x = ((pixels.float() / 255 - 0.1307) / 0.3081).unsqueeze(1)  # what load_mnist stores
    assert torch.equal(perf.to_uint8(x), pixels)
    data = perf.PerSampleMNIST(pixels, torch.arange(5))
    assert len(data) == 5
    image, label = data[3]
    torch.testing.assert_close(image, x[3], rtol=0, atol=1e-6)
    assert label == 3
    with pytest.raises(ValueError):
        perf.PerSampleMNIST(x, torch.arange(5))


def test_timed_returns_result_and_both_clocks() -> None:
    result, timing = perf.timed(lambda: sum(range(100_000)))
    assert result == sum(range(100_000))
    assert timing.wall_s > 0 and timing.cpu_s > 0 and timing.seconds == timing.cpu_s
    assert perf.Timing(2.0, 1.0, "cuda").seconds == 2.0


def test_measure_throughput_counts_images_and_trains() -> None:
    torch.manual_seed(0)
    model = perf.SpeedrunCNN()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    batches = device_batches((x, y), 16, torch.device("cpu"), shuffle=False)  # 16, 16, 8, then again
    result = perf.measure_throughput(model, torch.optim.SGD(model.parameters(), lr=0.1), batches,
                                     torch.device("cpu"), steps=4, warmup=1)
    assert result.images == 16 + 8 + 16 + 16  # after the untimed first batch of 16
    assert result.images_per_s == result.images / result.timing.seconds
    assert result.epoch_seconds(1000) == pytest.approx(1000 / result.images_per_s)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(("name", "row"), [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"), ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"), ("Tesla V100-SXM2-16GB", "V100"), ("NVIDIA L40S", None),
    ("NVIDIA H100 NVL", None), ("NVIDIA GeForce RTX 4090", None),
])
def test_gpu_names_map_to_the_peak_table(name: str, row: str | None) -> None:
    assert perf.gpu_model(name) == row


def test_peak_table_and_mfu() -> None:
    assert perf.PEAK_TFLOPS["H100 SXM"]["bf16"] == pytest.approx(989, abs=1)
    assert perf.PEAK_TFLOPS["A100"]["bf16"] == 312 and perf.PEAK_TFLOPS["T4"]["fp16"] == 65
    for peaks in perf.PEAK_TFLOPS.values():  # tensor-core formats are never slower than plain fp32
        assert all(v >= peaks["fp32"] for v in peaks.values())
    assert perf.peak_flops("cpu") is None
    assert perf.mfu(1e12, 0.5, 4e12) == pytest.approx(0.5)


def test_matmul_rate_is_positive_and_plausible() -> None:
    rate = perf.matmul_flops_per_second("cpu", n=128, repeats=2)
    assert 1e7 < rate < 1e13


def test_speedups() -> None:
    assert perf.speedups([2.0, 4.0, 3.0]).tolist() == [1.0, 2.0, 0.75]


def test_median_seconds_is_the_median_and_waits_for_the_device(monkeypatch):
    """The one timer: warm-up calls are not timed, the median is returned, and the device is
    synchronised before and after every timed call."""
    calls, syncs = [], []
    monkeypatch.setattr(perf, "synchronize", lambda device: syncs.append(str(device)))
    durations = iter([0.5, 0.5, 0.03, 0.01, 0.02])  # two warm-up calls, then three timed
    clock = [100.0]  # a fake perf_counter: each call of work() takes exactly its duration (a real
    # sleep overshoots on a loaded machine, and CI once measured the 0.02 s median as 0.033 s)
    monkeypatch.setattr(perf.time, "perf_counter", lambda: clock[0])

    def work():
        calls.append(1)
        clock[0] += next(durations)

    seconds = perf.median_seconds(work, repeats=3, warmup=2, device="cpu")
    assert len(calls) == 5 and len(syncs) == 6, (len(calls), len(syncs))
    assert seconds == pytest.approx(0.02, abs=1e-12), seconds  # the median, and the warm-ups left out
    with pytest.raises(ValueError, match="repeats"):
        perf.median_seconds(work, repeats=0)


def test_every_latency_helper_is_the_one_timer(monkeypatch):
    """deploy.latency, scratch.conv.time_call and measure_latency delegate to perf.median_seconds."""
    import torch

    from dlbook import deploy
    from dlbook.models import sequence_classifiers
    from dlbook.scratch import conv

    seen = []
    monkeypatch.setattr(perf, "median_seconds", lambda fn, **kw: seen.append(kw) or 1.25)
    monkeypatch.setattr(sequence_classifiers, "median_seconds", perf.median_seconds)
    assert deploy.latency(lambda: None, repeats=3, warmup=0) == 1.25
    assert conv.time_call(lambda: None, repeats=4) == 1.25
    model = torch.nn.Embedding(5, 2)
    assert sequence_classifiers.measure_latency(model, torch.zeros(1, 3, dtype=torch.long), "cpu") == 1.25
    assert [kw["repeats"] for kw in seen] == [3, 4, 5]
