"""ANN lesson 1 (chapters/ann/neuron-and-mlp.ipynb): the same checks as the notebook.

The parameter-count formula against real models (the source articles' MyModel and DeepANN with
BatchNorm), the hand forward pass against nn.Sequential in float64, the collapse of a linear
stack, and the source article's single-neuron gradient (-0.0249, not the printed -0.0067).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchinfo import summary

from dlbook.gradients import rel_error
from dlbook.scratch.mlp import mlp_forward

F64 = torch.float64


def mlp_param_count(sizes: list[int], batchnorm: bool = False) -> int:
    """sum_l (d_{l-1} + 1) d_l, plus 2 d (gamma, beta) per BatchNorm after each hidden layer."""
    linear = sum((d_in + 1) * d_out for d_in, d_out in zip(sizes[:-1], sizes[1:]))
    return linear + (sum(2 * d for d in sizes[1:-1]) if batchnorm else 0)


class MyModel(nn.Module):
    """The first source article's model, with the `import torch` it lacked."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(input_dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(torch.sigmoid(self.linear1(x)))


class DeepANN(nn.Module):
    """The second source article's model: [Linear, BatchNorm1d, ReLU, Dropout] per hidden layer."""

    def __init__(self, input_size: int, hidden_sizes: list[int], output_size: int, p: float = 0.3):
        super().__init__()
        self.hidden_layers = nn.ModuleList()
        prev = input_size
        for size in hidden_sizes:
            self.hidden_layers.extend([nn.Linear(prev, size), nn.BatchNorm1d(size), nn.ReLU(), nn.Dropout(p)])
            prev = size
        self.output = nn.Linear(prev, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden_layers:
            x = layer(x)
        return self.output(x)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sequential_relu(sizes: list[int], dtype: torch.dtype = torch.float32) -> nn.Sequential:
    layers: list[nn.Module] = []
    for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        layers.append(nn.Linear(a, b, dtype=dtype))
        if l < len(sizes) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@pytest.mark.parametrize(
    "model, sizes, batchnorm, expected",
    [
        (nn.Linear(3, 2), [3, 2], False, 8),  # the article's example: (3 + 1) * 2
        (MyModel(784, 128, 10), [784, 128, 10], False, 101_770),
        (sequential_relu([784, 256, 10]), [784, 256, 10], False, 203_530),
        (sequential_relu([5, 16, 8, 3]), [5, 16, 8, 3], False, 6 * 16 + 17 * 8 + 9 * 3),
        (DeepANN(784, [512, 256, 128], 10), [784, 512, 256, 128, 10], True, 569_226),
    ],
)
def test_param_count_formula_matches_real_models(model, sizes, batchnorm, expected):
    assert mlp_param_count(sizes, batchnorm) == expected
    assert n_params(model) == expected


def test_batchnorm_parameters_and_buffers():
    bn = nn.BatchNorm1d(512)
    assert n_params(bn) == 2 * 512  # gamma and beta
    buffers = dict(bn.named_buffers())
    assert set(buffers) == {"running_mean", "running_var", "num_batches_tracked"}
    model = DeepANN(784, [512, 256, 128], 10)
    assert n_params(model) == mlp_param_count([784, 512, 256, 128, 10]) + 2 * (512 + 256 + 128)
    # buffers are in the state_dict but not among the parameters
    n_state = sum(t.numel() for t in model.state_dict().values())
    assert n_state - n_params(model) == 2 * (512 + 256 + 128) + 3


def test_torchinfo_agrees_with_the_formula():
    model = DeepANN(784, [512, 256, 128], 10)
    stats = summary(model, input_size=(64, 784), verbose=0)
    assert stats.total_params == stats.trainable_params == 569_226


def test_hand_forward_equals_nn_sequential_float64():
    sizes = [5, 16, 8, 3]
    gen = torch.Generator().manual_seed(1)
    params = [
        (torch.randn(a, b, generator=gen, dtype=F64) / a**0.5, torch.randn(b, generator=gen, dtype=F64) * 0.1)
        for a, b in zip(sizes[:-1], sizes[1:])
    ]
    X = torch.randn(7, sizes[0], generator=gen, dtype=F64)
    logits, cache = mlp_forward(params, X)
    assert logits.shape == (7, 3)
    assert [tuple(z.shape) for z in cache.preacts] == [(7, 16), (7, 8), (7, 3)]

    model = sequential_relu(sizes, F64)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, (W, b) in zip(linears, params):
            assert lin.weight.shape == W.T.shape  # nn.Linear stores (out, in)
            lin.weight.copy_(W.T)
            lin.bias.copy_(b)
    assert rel_error(model(X), logits) < 1e-8
    # Forgetting a bias is caught: the check is not vacuous.
    with torch.no_grad():
        linears[1].bias.zero_()
    assert rel_error(model(X), logits) > 1e-3


def test_linear_stack_collapses_to_one_matrix():
    torch.manual_seed(0)
    dims = [6, 32, 32, 16, 4]
    stack = nn.Sequential(*[nn.Linear(a, b, dtype=F64) for a, b in zip(dims[:-1], dims[1:])])
    X = torch.randn(50, dims[0], dtype=F64)
    W = torch.eye(dims[0], dtype=F64)
    b = torch.zeros(dims[0], dtype=F64)
    for lin in stack:
        W = W @ lin.weight.T
        b = b @ lin.weight.T + lin.bias
    assert W.shape == (6, 4)
    assert rel_error(stack(X), X @ W + b) < 1e-8
    with_relu = nn.Sequential(*[m for lin in stack for m in (lin, nn.ReLU())][:-1])
    assert rel_error(with_relu(X), X @ W + b) > 0.1


def test_single_neuron_gradient_of_the_source_article():
    x, w, b, y = (torch.tensor(v, dtype=F64) for v in (1.0, 0.5, 0.1, 0.7))
    a = torch.sigmoid(w * x + b)
    hand_w = 2 * (a - y) * a * (1 - a) * x
    hand_b = 2 * (a - y) * a * (1 - a)

    w_, b_ = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ((torch.sigmoid(w_ * x + b_) - y) ** 2).backward()
    assert rel_error(hand_w, w_.grad) < 1e-8
    assert rel_error(hand_b, b_.grad) < 1e-8
    assert w_.grad.item() == pytest.approx(-0.024866, abs=1e-6)
    assert b_.grad.item() == pytest.approx(w_.grad.item())  # x = 1
    assert abs(w_.grad.item() - (-0.0067)) > 0.01  # the printed value is wrong


def test_batchnorm_needs_a_batch_in_training_mode():
    model = DeepANN(784, [512, 256, 128], 10)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model.train()(torch.randn(1, 784))
    assert model.eval()(torch.randn(1, 784)).shape == (1, 10)


def test_reduce_lr_on_plateau_has_no_verbose_parameter():
    """The lessons' statement: `verbose` (deprecated in PyTorch 2.2) is not a parameter of
    ReduceLROnPlateau in the course's torch; the source article's verbose=True fails."""
    import inspect

    assert "verbose" not in inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau).parameters
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError):
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, verbose=True)
