"""RNN lesson: multi-task learning with a shared LSTM encoder (chapters/rnn/multi-task-rnn.ipynb).

The code is dlbook/models/multitask.py. The notebook's proof, that the shared parameters receive
sum_k w_k grad L_k (eq-mtl-grad-shared) and each head w_k grad L_k (eq-mtl-grad-head), runs here
too, with planted bugs that it must catch; so do the padding, packing and causality checks.
"""

from __future__ import annotations

import math

import pytest
import torch

import dlbook.models.multitask as mt
from dlbook.gradients import rel_error

VOCAB = 30
SPECS = {
    "sentiment": mt.TaskSpec(2, "last"),
    "negation": mt.TaskSpec(2, "mean"),
    "lm": mt.TaskSpec(9, "token", causal=True),
}
WEIGHTS = {"sentiment": 1.3, "negation": 0.7, "lm": 0.2}


def toy_batch(seed: int = 0, n: int = 5, t: int = 7) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Random padded sentences with different lengths and targets for the three tasks."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    lengths[0] = t
    x = torch.randint(2, VOCAB, (n, t), generator=g)
    x[torch.arange(t)[None, :] >= lengths[:, None]] = 0
    lm = torch.randint(0, 9, (n, t), generator=g)
    lm[x == 0] = mt.IGNORE
    targets = {"sentiment": torch.randint(0, 2, (n,), generator=g),
               "negation": torch.randint(0, 2, (n,), generator=g), "lm": lm}
    return x, lengths, targets


def toy_model(seed: int = 0, tasks=None, **kwargs) -> mt.MultiTaskLSTM:
    torch.manual_seed(seed)
    return mt.MultiTaskLSTM(VOCAB, tasks or SPECS, embed_dim=5, hidden_size=6, **kwargs)


# --- tasks derived from the text ---------------------------------------------------------------


def test_negation_labels_rule_and_truncation() -> None:
    sentences = [["it", "doesn't", "work"], ["not", "bad"], ["a", "fine", "film"], ["good", "but", "never", "great"],
                 ["knot", "note", "nothing"], ["n't"]]
    assert mt.negation_labels(sentences).tolist() == [1, 1, 0, 1, 1, 1]
    # the model reads only max_len words: a cue after the cut must not set the label
    assert mt.negation_labels(sentences, max_len=2).tolist() == [1, 1, 0, 0, 0, 1]
    assert not mt.is_negation("knot") and not mt.is_negation("note") and mt.is_negation("cannot")


def test_lm_targets_hand_example() -> None:
    # ids: 0 pad, 1 <unk>, 2.. frequency-ranked words; keep = 5 -> ids >= 5 become 1.
    ids = torch.tensor([[2, 3, 7, 4, 0], [5, 2, 3, 4, 6], [3, 0, 0, 0, 0]])
    lengths = torch.tensor([4, 5, 1])
    got = mt.lm_targets(ids, lengths, keep=5, max_len=4)
    I, E = mt.IGNORE, mt.EOS
    expected = torch.tensor([
        [3, 1, 4, E],  # "2 3 7 4" ends inside the window: the last word predicts EOS
        [2, 3, 4, 1],  # truncated: the 4th input word predicts the 5th (id 6 -> <unk>), not EOS
        [E, I, I, I],  # one word, then padding
    ])
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="max_len \\+ 1"):
        mt.lm_targets(ids[:, :4], lengths, keep=5, max_len=4)


def test_polarity_tasks_share_sentences_and_split(mirror) -> None:
    from dlbook.data import load_polarity

    data = load_polarity("quick")
    val = mt.polarity_tasks(data, "val", max_len=12, lm_keep=50)
    n = len(data.split("val"))
    assert val.x.shape == (n, 12) and len(val.lengths) == n
    assert val.lengths.max() <= 12 and val.lengths.min() >= 1
    assert torch.equal(val.targets["sentiment"], data.labels[data.split("val")])
    lm = val.targets["lm"]
    real = torch.arange(12)[None, :] < val.lengths[:, None]
    assert bool((lm[~real] == mt.IGNORE).all()) and bool((lm[real] >= 0).all()) and int(lm.max()) < 50
    # next-word targets are the inputs shifted by one (where the word is frequent and not the end)
    inner = real[:, 1:] & (val.x[:, 1:] < 50)
    assert torch.equal(lm[:, :-1][inner], val.x[:, 1:][inner])
    rate = val.targets["negation"].float().mean().item()
    assert 0.1 < rate < 0.4, f"negation rate {rate:.2f} is not the 20-25 % the lesson reports"


# --- the model ---------------------------------------------------------------------------------


def test_output_shapes_and_parameter_sharing() -> None:
    x, lengths, _ = toy_batch()
    out = toy_model()(x, lengths)
    assert out["sentiment"].shape == (5, 2) and out["negation"].shape == (5, 2) and out["lm"].shape == (5, 7, 9)
    multi = mt.count_parameters(toy_model())
    singles = [mt.count_parameters(toy_model(tasks={k: s})) for k, s in SPECS.items()]
    shared = sum(p.numel() for p in toy_model().shared_parameters().values())
    assert multi < sum(singles)
    assert sum(singles) - multi == (len(SPECS) - 1) * shared  # the encoder is counted once, not three times


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_outputs(bidirectional: bool) -> None:
    """Extra padding columns leave every real output unchanged: packing + masked mean at work."""
    model = toy_model(bidirectional=bidirectional).eval()
    x, lengths, _ = toy_batch()
    longer = torch.cat([x, torch.zeros(5, 4, dtype=torch.long)], dim=1)
    a, b = model(x, lengths), model(longer, lengths)
    for k in ("sentiment", "negation"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(a["lm"], b["lm"][:, :7], rtol=0, atol=1e-6)


def test_unmasked_mean_would_see_padding() -> None:
    """Planted bug (the seed article's torch.mean(outputs, dim=1)): a plain mean changes with padding."""
    model = toy_model().eval()
    x, lengths, _ = toy_batch()
    longer = torch.cat([x, torch.zeros(5, 4, dtype=torch.long)], dim=1)
    plain = [model.encode(z, lengths)[0].mean(1) for z in (x, longer)]
    assert rel_error(plain[0], plain[1]) > 1e-2


def test_unpacked_one_direction_equals_packed() -> None:
    x, lengths, targets = toy_batch(seed=3)
    packed, padded = toy_model(pack=True).eval(), toy_model(pack=False).eval()
    padded.load_state_dict(packed.state_dict())
    a, b = packed(x, lengths), padded(x, lengths)
    torch.testing.assert_close(a["sentiment"], b["sentiment"], rtol=0, atol=1e-6)
    torch.testing.assert_close(a["negation"], b["negation"], rtol=0, atol=1e-6)
    real = x != 0
    torch.testing.assert_close(a["lm"][real], b["lm"][real], rtol=0, atol=1e-6)
    la, lb = mt.task_losses(a, targets), mt.task_losses(b, targets)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="must pack"):
        toy_model(bidirectional=True, pack=False)


def test_final_state_after_padding_is_wrong() -> None:
    """Planted bug (the seed's h_n[-1] without packing): the state after the padding differs."""
    model = toy_model(pack=False).eval()
    x, lengths, _ = toy_batch()
    out, final = model.encode(x, lengths)
    short = lengths < x.shape[1]
    assert short.any()
    assert rel_error(out[short, -1], final[short]) > 1e-2


@pytest.mark.parametrize("bidirectional", [False, True])
def test_language_model_head_cannot_see_the_future(bidirectional: bool) -> None:
    model = toy_model(bidirectional=bidirectional)
    x, lengths, _ = toy_batch()
    for t in (0, 3):
        assert mt.future_influence(model, x, lengths, "lm", t) == 0.0


def test_bidirectional_token_head_leaks_the_next_word() -> None:
    """Planted bug: a next-word head on both directions of a BiLSTM reads the answer."""
    tasks = {"lm": mt.TaskSpec(9, "token", causal=False)}
    model = toy_model(tasks=tasks, bidirectional=True)
    x, lengths, _ = toy_batch()
    assert mt.future_influence(model, x, lengths, "lm", 2) > 1e-4
    with pytest.raises(ValueError, match="only a token head"):
        mt.TaskSpec(2, "last", causal=True)


# --- the loss and its gradient -------------------------------------------------------------------


def test_multitask_loss_is_the_weighted_sum() -> None:
    model = toy_model()
    x, lengths, targets = toy_batch()
    with torch.no_grad():
        out = model(x, lengths)
    parts = mt.task_losses(out, targets)
    total = mt.multitask_loss(out, targets, WEIGHTS)
    assert math.isclose(float(total), sum(WEIGHTS[k] * float(v) for k, v in parts.items()), rel_tol=1e-6)
    # the token loss averages over real words only
    real = targets["lm"] != mt.IGNORE
    manual = torch.nn.functional.cross_entropy(out["lm"][real], targets["lm"][real])
    assert math.isclose(float(parts["lm"]), float(manual), rel_tol=1e-6)
    with pytest.raises(KeyError, match="no weight"):
        mt.multitask_loss(out, targets, {"sentiment": 1.0})
    single = toy_model(tasks={"lm": SPECS["lm"]})
    assert set(mt.task_losses(single(x, lengths), targets)) == {"lm"}  # extra targets are ignored


@pytest.mark.parametrize("bidirectional", [False, True])
def test_shared_gradient_is_weighted_sum_of_task_gradients(bidirectional: bool) -> None:
    model = toy_model(bidirectional=bidirectional)
    x, lengths, targets = toy_batch(seed=1)
    report = mt.check_shared_gradient(model, x, lengths, targets, WEIGHTS)
    assert len(report.errors) == len(list(model.parameters()))
    report.assert_ok()


def test_head_gradient_comes_from_its_own_task_only() -> None:
    model = toy_model().double()
    x, lengths, targets = toy_batch(seed=2)
    per_task = mt.task_gradients(model, x, lengths, targets)
    for k, grads in per_task.items():
        for name, g in grads.items():
            if name.startswith("heads.") and not name.startswith(f"heads.{k}."):
                assert g.abs().max() == 0, f"L_{k} reached {name}"
            if name == "encoder.weight_hh_l0":
                assert g.abs().max() > 0, f"L_{k} did not reach the shared encoder"


def test_planted_bugs_are_caught() -> None:
    """Forgetting the weights, or one task's term, must fail the 1e-8 check by far."""
    model = toy_model().double()
    x, lengths, targets = toy_batch(seed=4)
    per_task = mt.task_gradients(model, x, lengths, targets)
    model.zero_grad()
    mt.multitask_loss(model(x, lengths), targets, WEIGHTS).backward()
    auto = model.encoder.weight_ih_l0.grad
    name = "encoder.weight_ih_l0"
    right = mt.combine_gradients(per_task, WEIGHTS)[name]
    unweighted = mt.combine_gradients(per_task, dict.fromkeys(WEIGHTS, 1.0))[name]
    dropped = mt.combine_gradients({k: v for k, v in per_task.items() if k != "negation"}, WEIGHTS)[name]
    assert rel_error(right, auto) < 1e-8
    assert rel_error(unweighted, auto) > 1e-2
    assert rel_error(dropped, auto) > 1e-3


def test_gradient_geometry_scales_with_weights() -> None:
    model = toy_model().double()
    x, lengths, targets = toy_batch()
    per_task = mt.task_gradients(model, x, lengths, targets)
    shared = list(model.shared_parameters())
    norms1, cos1 = mt.gradient_geometry(per_task, shared, dict.fromkeys(SPECS, 1.0))
    norms2, cos2 = mt.gradient_geometry(per_task, shared, WEIGHTS)
    for k in SPECS:
        assert math.isclose(norms2[k], WEIGHTS[k] * norms1[k], rel_tol=1e-9)
    assert set(cos1) == {("sentiment", "negation"), ("sentiment", "lm"), ("negation", "lm")}
    for pair, c in cos1.items():
        assert -1 <= c <= 1 and math.isclose(c, cos2[pair], rel_tol=1e-9)  # weights do not turn directions


def test_uniform_guess_weights() -> None:
    w = mt.uniform_guess_weights(SPECS)
    assert math.isclose(w["sentiment"], 1 / math.log(2)) and math.isclose(w["lm"], 1 / math.log(9))


# --- baselines and training ----------------------------------------------------------------------


def test_baselines() -> None:
    assert mt.majority_accuracy(torch.tensor([0, 1, 1, 1]), torch.tensor([1, 0, 1, 1])) == 0.75
    uniform = torch.arange(4).repeat(5)
    assert math.isclose(mt.unigram_perplexity(uniform, uniform, 4), 4.0, rel_tol=1e-9)
    skewed = torch.tensor([0] * 9 + [1, mt.IGNORE])
    assert mt.unigram_perplexity(skewed, skewed, 2) < 2.0


def synthetic_tasks(n: int, seed: int) -> mt.TaskData:
    """Label: does word 3 occur? (a learnable 'negation' task); next word: copy of the input."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=g)
    x = torch.randint(4, VOCAB, (n, 8), generator=g)
    has = torch.rand(n, generator=g) < 0.5
    x[has, 0] = 3
    x[torch.arange(8)[None, :] >= lengths[:, None]] = 0
    lm = torch.full((n, 8), mt.IGNORE)
    lm[:, :-1] = torch.where(x[:, 1:] > 0, x[:, 1:] % 9, mt.IGNORE)
    return mt.TaskData(x, lengths, {"negation": has.long(), "lm": lm, "sentiment": has.long()})


def test_train_multitask_learns_reproducibly_with_matched_budget() -> None:
    train, val = synthetic_tasks(256, 0), synthetic_tasks(128, 1)
    tasks = {"negation": SPECS["negation"], "lm": SPECS["lm"]}
    runs = []
    for spec in (tasks, tasks, {"negation": SPECS["negation"]}):
        model = toy_model(tasks=spec)
        runs.append(mt.train_multitask(model, train, val, epochs=3, batch_size=32, lr=2e-2, progress=False))
    assert runs[0].val == runs[1].val, "two identical runs must give identical curves"
    assert runs[0].steps == runs[2].steps and runs[0].steps[-1] == 3 * 8  # same steps single vs multi
    acc = runs[0].last["negation"]
    assert acc > mt.majority_accuracy(train.targets["negation"], val.targets["negation"]) + 0.1
    assert runs[0].last["lm"] < runs[0].val["lm"][0]
