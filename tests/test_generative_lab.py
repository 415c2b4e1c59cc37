"""The generative lab (``solutions/generative`` -> ``labs/generative``): clean, in sync with its release, graded as intended.

The grading checks of ``tests/test_fusion_lab.py``, for the ``generative`` assignment (the notebook
checks of ``tests/test_lab_sync.py`` cover every lab folder). One ``grade generative`` batch, in a
temporary copy of the course (``labs/`` and ``grading/`` of the repository are never touched),
grades three submissions: the solution, the lab as released, and one with *every* exercise half
right in the way its hidden tests are meant to catch. The last one shows that each exercise's
partial credit is real: each passes its visible test and fails its hidden one. A second half-right
answer to exercise 5 (the derivation left unsimplified) is checked in-process (visible test passed,
hidden failed), and so are more half-right answers, other right answers (which must get every point)
and wrong answers (which must fail even the visible tests), each by running the solution notebook
with some of its answers replaced, in this process, without a grading run.
"""

from __future__ import annotations

import pytest
from lab_checks import EveryExerciseHalfRight, Lab, graded_cell_outcomes

LAB = Lab("generative", "generative-lab.ipynb")

# Half-right answers: each passes the exercise's visible test (the simple case) and fails its hidden
# tests (the general case the statement describes).

# 1. The KL divergence to the standard normal prior, the formula every VAE tutorial shows: right while
# p = N(0, I), else it ignores p.
EX1_PRIOR_ONLY = """def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    # -1/2 sum(1 + logvar - mu^2 - exp(logvar)): KL to N(0, I) only, mu_p and logvar_p are ignored
    return -0.5 * (1 + logvar_q - mu_q**2 - logvar_q.exp()).sum(dim=-1)
"""

# 2. sigma as sqrt(exp(logvar)): the same number while exp(logvar) is representable; at logvar = 1000 it is
# inf, at logvar = -1000 it is 0 and the gradient of the square root there is inf * 0 = nan.
EX2_SQRT_OF_EXP = """def reparameterize(mu, logvar, eps):
    return mu + torch.sqrt(torch.exp(logvar)) * eps  # should be exp(logvar / 2): exp(logvar) over- or underflows


def reparam_grad_mu(f, mu, logvar, eps):
    mu = mu.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(reparameterize(mu, logvar.detach(), eps)).mean(), mu)
    return grad
"""

# 3. The losses written as they read, log of sigmoid: right for moderate logits, -log(0) = inf once the
# sigmoid rounds to 0 or 1 (|s| > 37 in float64).
EX3_LOG_OF_SIGMOID = """def discriminator_loss(real_logits, fake_logits):
    return -torch.log(torch.sigmoid(real_logits)).mean() - torch.log(1 - torch.sigmoid(fake_logits)).mean()


def generator_loss(fake_logits):
    return -torch.log(torch.sigmoid(fake_logits)).mean()  # should never take the log of a rounded probability
"""

# 4. abar reshaped to (B, 1): right for a batch of vectors, wrong for images (and for a batch of scalars).
EX4_VECTORS_ONLY = """def q_sample(x0, t, noise, alphas_cumprod):
    abar = alphas_cumprod[t - 1].view(-1, 1)  # should be (B, 1, ..., 1), as many 1s as x0 has dimensions after B
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
"""

# 5a. abar_{t-1} as alphas_cumprod[t - 2]: right for t >= 2, but at t = 1 the index -1 wraps around to
# abar_T instead of abar_0 = 1.
EX5_WRAPS_AT_T1 = """def q_posterior(x0, xt, t, betas):
    alphas = 1 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    beta, alpha, abar = betas[t - 1], alphas[t - 1], alphas_cumprod[t - 1]
    abar_prev = alphas_cumprod[t - 2]  # at t = 1: index -1, abar_T (should be abar_0 = 1)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    mean = (abar_prev.sqrt() * beta / (1 - abar)).reshape(shape) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar)).reshape(shape) * xt
    return mean, beta * (1 - abar_prev) / (1 - abar)
"""

# 5b. The derivation left unsimplified, variance 1/A and mean B/A: right for t >= 2, but at t = 1 the
# precision A is infinite (1 / (1 - abar_0) = 1/0) and the mean inf / inf = nan.
EX5_UNSIMPLIFIED = """def q_posterior(x0, xt, t, betas):
    alphas = 1 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    beta, alpha, abar_prev = betas[t - 1], alphas[t - 1], alphas_cumprod_prev[t - 1]
    precision = alpha / beta + 1 / (1 - abar_prev)  # A: infinite at t = 1
    shape = (-1,) + (1,) * (x0.dim() - 1)
    b = (alpha.sqrt() / beta).reshape(shape) * xt + (abar_prev.sqrt() / (1 - abar_prev)).reshape(shape) * x0
    return b / precision.reshape(shape), 1 / precision  # should be simplified: B / A is nan at t = 1
"""

HALF_RIGHT = {
    "ex1-solution": EX1_PRIOR_ONLY,
    "ex2-solution": EX2_SQRT_OF_EXP,
    "ex3-solution": EX3_LOG_OF_SIGMOID,
    "ex4-solution": EX4_VECTORS_ONLY,
    "ex5-solution": EX5_WRAPS_AT_T1,
}


class TestGenerativeLab(EveryExerciseHalfRight):
    """Exercise 5 left as 1/A and B/A: its visible test (t >= 2) passes and its hidden test (t = 1) fails (checked in-process)."""

    lab = LAB
    partial = {"ex5-solution": EX5_UNSIMPLIFIED}
    partial_exercise = "ex5"
    half_right = HALF_RIGHT


# More half-right answers, checked in-process like ``partial``: the visible test passes, the hidden one fails.
MORE_HALF_RIGHT = {
    # the variance ratio as exp(logvar_q) / exp(logvar_p): inf / inf = nan beyond logvar = 709
    "ex1-ratio-of-exponentials": ("ex1", """def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    var_q, var_p = logvar_q.exp(), logvar_p.exp()
    return 0.5 * (logvar_p - logvar_q + (var_q + (mu_q - mu_p) ** 2) / var_p - 1).sum(dim=-1)
"""),
    # the estimator differentiates the caller's mu: its .grad is left behind (and a caller's graph is changed)
    "ex2-grad-into-callers-mu": ("ex2", """def reparameterize(mu, logvar, eps):
    return mu + torch.exp(0.5 * logvar) * eps


def reparam_grad_mu(f, mu, logvar, eps):
    if not mu.requires_grad:
        mu = mu.detach().requires_grad_(True)
    f(reparameterize(mu, logvar.detach(), eps)).mean().backward()  # should not write into the caller's mu.grad
    return mu.grad.clone()
"""),
    # one mean over real and fake logits together, times 2: the sum of the two means only when N_r = N_f
    "ex3-one-mean-over-both": ("ex3", """def discriminator_loss(real_logits, fake_logits):
    losses = torch.cat([-F.logsigmoid(real_logits).flatten(), -F.logsigmoid(-fake_logits).flatten()])
    return 2 * losses.mean()  # should be the mean over the real logits plus the mean over the fake ones


def generator_loss(fake_logits):
    return -F.logsigmoid(fake_logits).mean()
"""),
    # the time step of the first example used for the whole batch: right when every example has the same t
    "ex5-first-t-for-all": ("ex5", """def q_posterior(x0, xt, t, betas):
    step = int(t[0])  # should be each example's own t
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    abar = alphas_cumprod[step - 1]
    abar_prev = alphas_cumprod[step - 2] if step > 1 else torch.ones((), dtype=betas.dtype)
    beta = betas[step - 1]
    mean = abar_prev.sqrt() * beta / (1 - abar) * x0 + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar) * xt
    return mean, torch.full(t.shape, (beta * (1 - abar_prev) / (1 - abar)).item(), dtype=betas.dtype)
"""),
}


@pytest.mark.parametrize("name", sorted(MORE_HALF_RIGHT))
def test_more_half_right_answers_keep_only_the_visible_points(name: str) -> None:
    exercise, source = MORE_HALF_RIGHT[name]
    passed = graded_cell_outcomes(LAB, {f"{exercise}-solution": source})
    assert passed[f"{exercise}-visible"] and not passed[f"{exercise}-hidden"], passed
    assert all(ok for cell, ok in passed.items() if not cell.startswith(f"{exercise}-")), passed


# Other right answers, written differently from the solution: every test cell must pass (the tolerances
# leave room for any stable formula, F.softplus's switch to the identity above 20 included).
OTHER_RIGHT_ANSWERS = {
    "ex1-solution": """def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    mu_q, logvar_q, mu_p, logvar_p = torch.broadcast_tensors(mu_q, logvar_q, mu_p, logvar_p)
    terms = logvar_p - logvar_q + torch.exp(logvar_q - logvar_p) + ((mu_q - mu_p) / torch.exp(logvar_p / 2)) ** 2 - 1
    return terms.sum(-1) / 2
""",
    "ex2-solution": """def reparameterize(mu, logvar, eps):
    return torch.addcmul(mu, (logvar / 2).exp(), eps)


def reparam_grad_mu(f, mu, logvar, eps):
    leaf = mu.detach().clone().requires_grad_(True)
    values = f(reparameterize(leaf, logvar, eps))
    (grad,) = torch.autograd.grad(values.sum() / eps.shape[0], leaf)
    return grad.detach()
""",
    "ex3-solution": """def _neg_log_sigmoid(s):
    return F.softplus(-s)  # log(1 + exp(-s)), stable (the identity above 20)


def discriminator_loss(real_logits, fake_logits):
    return _neg_log_sigmoid(real_logits).mean() + _neg_log_sigmoid(-fake_logits).mean()


def generator_loss(fake_logits):
    return torch.logaddexp(torch.zeros_like(fake_logits), -fake_logits).mean()
""",
    "ex4-solution": """def q_sample(x0, t, noise, alphas_cumprod):
    rows = []
    for n in range(x0.shape[0]):  # one example at a time: slower, as right
        abar = alphas_cumprod[t[n] - 1]
        rows.append(abar.sqrt() * x0[n] + (1 - abar).sqrt() * noise[n])
    return torch.stack(rows)
""",
    "ex5-solution": """def q_posterior(x0, xt, t, betas):
    # the noise form: eps from x_t and x0, then mean = (x_t - beta / sqrt(1 - abar) eps) / sqrt(alpha)
    abar = torch.cumprod(1 - betas, dim=0)[t - 1]
    abar_prev = torch.where(t > 1, torch.cumprod(1 - betas, dim=0)[(t - 2).clamp(min=0)], torch.ones_like(abar))
    beta = betas[t - 1]
    view = [-1] + [1] * (x0.dim() - 1)
    a, b, r = abar.view(view), beta.view(view), (1 - beta).sqrt().view(view)
    eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
    return (xt - b / (1 - a).sqrt() * eps) / r, beta * (1 - abar_prev) / (1 - abar)
""",
}


def test_other_right_answers_get_every_point() -> None:
    passed = graded_cell_outcomes(LAB, OTHER_RIGHT_ANSWERS)
    assert all(passed.values()), passed


# Wrong answers: each fails even its exercise's visible test (the visible tests are not vacuous).
WRONG = {
    # the arguments swapped: KL(p || q)
    "ex1-solution": """def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    return 0.5 * (logvar_q - logvar_p + torch.exp(logvar_p - logvar_q) + (mu_q - mu_p) ** 2 * torch.exp(-logvar_q) - 1).sum(-1)
""",
    # the variance used as the standard deviation
    "ex2-solution": """def reparameterize(mu, logvar, eps):
    return mu + torch.exp(logvar) * eps


def reparam_grad_mu(f, mu, logvar, eps):
    mu = mu.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(reparameterize(mu, logvar, eps)).mean(), mu)
    return grad
""",
    # the saturating generator loss of the minimax game, log(1 - D(G(z)))
    "ex3-solution": """def discriminator_loss(real_logits, fake_logits):
    return -F.logsigmoid(real_logits).mean() - F.logsigmoid(-fake_logits).mean()


def generator_loss(fake_logits):
    return F.logsigmoid(-fake_logits).mean()
""",
    # abar_t read at index t: one step late
    "ex4-solution": """def q_sample(x0, t, noise, alphas_cumprod):
    abar = alphas_cumprod[t.clamp(max=len(alphas_cumprod) - 1)].reshape(-1, *([1] * (x0.dim() - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
""",
    # the right mean with the variance beta_t (the other choice of the DDPM paper for its sampler, not the posterior's)
    "ex5-solution": """def q_posterior(x0, xt, t, betas):
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    abar = alphas_cumprod[t - 1]
    abar_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])[t - 1]
    beta = betas[t - 1]
    shape = (-1,) + (1,) * (x0.dim() - 1)
    mean = (abar_prev.sqrt() * beta / (1 - abar)).reshape(shape) * x0 + ((1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)).reshape(shape) * xt
    return mean, beta.clone()
""",
}


def test_wrong_answers_fail_the_visible_tests() -> None:
    passed = graded_cell_outcomes(LAB, WRONG)
    assert not any(passed.values()), {cell: ok for cell, ok in passed.items() if ok}
