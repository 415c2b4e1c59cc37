"""The optimization lab (``solutions/optimization`` -> ``labs/optimization``): graded as intended.

The grading checks of ``tests/test_rnn_lab.py``, for the ``optimization`` assignment (the notebook
checks of ``tests/test_lab_sync.py`` cover every lab folder). One ``grade optimization`` batch, in a
temporary copy of the course (``labs/`` and ``grading/`` of the repository are never touched),
grades three submissions: the solution, the lab as released, and one with *every* exercise half right in the way its hidden tests are meant to catch. The last one shows
that each exercise's partial credit is real: each passes its visible test and fails its hidden
one. A second half-right answer to exercise 3 is checked in-process (visible test passed,
hidden failed). The same batch checks that ``labs/optimization`` is in sync with ``solutions/optimization``.
"""

from __future__ import annotations

from lab_checks import EveryExerciseHalfRight, Lab

LAB = Lab("optimization", "optimization-lab.ipynb")

# Half-right answers: each passes the exercise's visible test (the simple case) and fails its hidden
# tests (the general case the statement describes).

# 1. AdamW's decoupled decay instead of Adam's L2 penalty: the same as Adam while weight_decay = 0.
EX1_DECOUPLED_DECAY = """def adam_step(param, grad, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    beta1, beta2 = betas
    if not state:
        state["m"], state["v"], state["t"] = torch.zeros_like(param), torch.zeros_like(param), 0
    state["t"] += 1
    param.mul_(1 - lr * weight_decay)  # AdamW: torch.optim.Adam adds weight_decay * param to grad instead
    state["m"] = beta1 * state["m"] + (1 - beta1) * grad
    state["v"] = beta2 * state["v"] + (1 - beta2) * grad**2
    m_hat = state["m"] / (1 - beta1 ** state["t"])
    v_hat = state["v"] / (1 - beta2 ** state["t"])
    param -= lr * m_hat / (v_hat.sqrt() + eps)
"""

# 2. The cosine adds min_lr on top of the full swing: right while min_lr = 0, else it starts at
# base_lr + min_lr.
EX2_FLOOR_ON_TOP = """def warmup_cosine_lr(step, base_lr, warmup_steps, total_steps, min_lr=0.0, start_factor=0.1):
    if step < warmup_steps:
        return base_lr * (start_factor + (1 - start_factor) * step / warmup_steps)
    progress = min(step - warmup_steps, total_steps - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * base_lr * (1 + math.cos(math.pi * progress))  # should scale (base_lr - min_lr)
"""

# 3a. optimizer.step() after unscale_ instead of scaler.step(optimizer): right until a step overflows,
# when it writes inf/nan into the weights.
EX3_STEPS_ON_OVERFLOW = """def amp_train_step(model, optimizer, scaler, loss_fn, x, y, max_norm=None, dtype=torch.float16):
    optimizer.zero_grad()
    with torch.autocast(device_type=x.device.type, dtype=dtype):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()  # should be scaler.step(optimizer): it skips the step when a gradient is inf or nan
    scaler.update()
    return loss.item()
"""

# 3b. Clipping before unscale_: it clips S times the gradients. Right whenever nothing is clipped.
EX3_CLIPS_SCALED = """def amp_train_step(model, optimizer, scaler, loss_fn, x, y, max_norm=None, dtype=torch.float16):
    optimizer.zero_grad()
    with torch.autocast(device_type=x.device.type, dtype=dtype):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    if max_norm is not None:  # should call scaler.unscale_(optimizer) first
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()
"""

# 4. One norm over all groups and one threshold: right for an optimizer with a single group.
EX4_ONE_GLOBAL_NORM = """def clip_grad_norm_per_group(optimizer, max_norm, error_if_nonfinite=False):
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))  # should be one norm per group
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError("non-finite gradient norm")
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g.mul_(coef)
    return [total for _ in optimizer.param_groups]
"""

# 5. Each micro-batch loss divided by k: right only when the micro-batches have equal sizes.
EX5_DIVIDES_BY_K = """def accumulation_step(model, optimizer, loss_fn, micro_batches):
    optimizer.zero_grad()
    losses = []
    for x, y in micro_batches:
        loss = loss_fn(model(x), y) / len(micro_batches)  # should weigh by x.shape[0] / N
        loss.backward()
        losses.append(loss.item())
    optimizer.step()
    return sum(losses)
"""

HALF_RIGHT = {
    "ex1-solution": EX1_DECOUPLED_DECAY,
    "ex2-solution": EX2_FLOOR_ON_TOP,
    "ex3-solution": EX3_STEPS_ON_OVERFLOW,
    "ex4-solution": EX4_ONE_GLOBAL_NORM,
    "ex5-solution": EX5_DIVIDES_BY_K,
}


class TestOptimizationLab(EveryExerciseHalfRight):
    lab = LAB
    partial = {"ex3-solution": EX3_CLIPS_SCALED}
    partial_exercise = "ex3"
    half_right = HALF_RIGHT
