"""Fusion lesson: sequence to sequence with attention (chapters/fusion/seq2seq-translation.ipynb).

The data generator is dlbook/data/number_words.py (numbers in English words, Chinese numerals and
digits, with the 零 and 一十 rules); the model is dlbook/models/seq2seq.py: dot-product attention
with a hand-derived backward pass and the additive attention reused from captioning, both checked in
float64 with planted bugs that must be caught; the GRU encoder-decoder; greedy and beam search;
corpus BLEU against torchmetrics.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchmetrics.text import BLEUScore

import dlbook.models.captioning as cap
from dlbook.data import number_words as nw
from dlbook.gradients import compare, gradcheck64, rel_error
from dlbook.models import seq2seq as s2s

f64 = torch.float64

# --------------------------------------------------------------------------- grammar

EXAMPLES = [
    (1, "一", "one"), (10, "十", "ten"), (15, "十五", "fifteen"), (20, "二十", "twenty"),
    (45, "四十五", "forty-five"), (100, "一百", "one hundred"), (105, "一百零五", "one hundred and five"),
    (110, "一百一十", "one hundred and ten"), (115, "一百一十五", "one hundred and fifteen"),
    (312, "三百一十二", "three hundred and twelve"), (1000, "一千", "one thousand"),
    (1005, "一千零五", "one thousand and five"), (1010, "一千零一十", "one thousand and ten"),
    (1500, "一千五百", "one thousand five hundred"), (2050, "二千零五十", "two thousand and fifty"),
    (10000, "一万", "ten thousand"), (10010, "一万零一十", "ten thousand and ten"),
    (10100, "一万零一百", "ten thousand one hundred"), (12005, "一万二千零五", "twelve thousand and five"),
    (100000, "十万", "one hundred thousand"), (100020, "十万零二十", "one hundred thousand and twenty"),
    (101000, "十万一千", "one hundred and one thousand"), (110000, "十一万", "one hundred and ten thousand"),
    (150000, "十五万", "one hundred and fifty thousand"), (210000, "二十一万", "two hundred and ten thousand"),
    (120340, "十二万零三百四十", "one hundred and twenty thousand three hundred and forty"),
    (999999, "九十九万九千九百九十九", "nine hundred and ninety-nine thousand nine hundred and ninety-nine"),
]


@pytest.mark.parametrize(("n", "zh", "en"), EXAMPLES)
def test_grammar_examples(n: int, zh: str, en: str) -> None:
    assert nw.chinese(n) == zh
    assert nw.english(n) == en
    assert nw.digits(n) == str(n)


def _parse_chinese(text: str) -> int:
    """An independent reader of Chinese numerals (not the generator run backwards)."""
    units = {"十": 10, "百": 100, "千": 1000}
    total = section = digit = 0
    for ch in text:
        if ch in nw.CN_DIGITS:
            digit = nw.CN_DIGITS.index(ch)
        elif ch in units:
            section += (digit or 1) * units[ch]  # a bare 十 is 一十
            digit = 0
        elif ch == "万":
            total += (section + digit) * 10_000
            section = digit = 0
        else:
            raise ValueError(ch)
    return total + section + digit


def _parse_english(text: str) -> int:
    words = nw.tokenize(text, "en")
    total = current = 0
    for w in words:
        if w in nw.ONES:
            current += nw.ONES.index(w)
        elif w in nw.TENS:
            current += 10 * nw.TENS.index(w)
        elif w == "hundred":
            current *= 100
        elif w == "thousand":
            total, current = current * 1000, 0
    return total + current


NUMBERS = [*range(1, 20_001), *range(20_001, nw.MAX_NUMBER + 1, 97), nw.MAX_NUMBER]


def test_both_spellings_read_back_to_the_number() -> None:
    for n in NUMBERS:
        assert _parse_chinese(nw.chinese(n)) == n, (n, nw.chinese(n))
        assert _parse_english(nw.english(n)) == n, (n, nw.english(n))


def test_zero_rule_one_ling_per_run_never_at_the_end() -> None:
    for n in NUMBERS:
        zh = nw.chinese(n)
        assert "零零" not in zh and not zh.endswith("零") and not zh.startswith("零"), (n, zh)
        assert ("零" in zh) == _needs_ling(n), (n, zh)


def _needs_ling(n: int) -> bool:
    """零 is read iff a zero digit sits between two non-zero digits of one 万 group, or the group below
    万 starts with a zero and is not all zeros."""
    high, low = divmod(n, 10_000)

    def inner_zero(group: int) -> bool:
        s = str(group)
        return "0" in s.strip("0")

    return inner_zero(high) or inner_zero(low) or (high > 0 and 0 < low < 1000) if high else inner_zero(low)


def test_yi_shi_rule() -> None:
    for n in NUMBERS:
        zh = nw.chinese(n)
        assert not zh.startswith("一十"), (n, zh)
        if zh.startswith("十"):
            assert str(n)[0] == "1" and len(str(n)) in (2, 6), (n, zh)
        s = str(n)
        kept = sum(1 for i, d in enumerate(s) if d == "1" and (len(s) - 1 - i) % 4 == 1 and i > 0)
        assert zh.count("一十") == kept, (n, zh)  # every 十 with digit 1 keeps its 一, except a leading one
    assert "一十" in nw.chinese(115) and "一十" in nw.chinese(10_010) and "一十" not in nw.chinese(110_000)


def test_out_of_range_is_refused() -> None:
    for bad in (0, -3, nw.MAX_NUMBER + 1):
        with pytest.raises(ValueError, match="supported"):
            nw.chinese(bad)


@pytest.mark.parametrize("language", nw.LANGUAGES)
def test_tokenize_round_trip_and_vocabulary_covers_every_token(language: str) -> None:
    vocab = nw.vocabulary(language)
    for n in NUMBERS[::50]:
        text = nw.SPELL[language](n)
        tokens = nw.tokenize(text, language)
        assert nw.detokenize(tokens, language) == text
        assert vocab.unk_id not in vocab.encode(tokens)
    assert nw.tokenize("forty-five", "en") == ["forty", "-", "five"]


def test_romanize_labels_every_chinese_token() -> None:
    assert all(nw.romanize(t) != t for t in nw.vocabulary("zh").itos[4:])


# --------------------------------------------------------------------------- the split


def test_split_is_disjoint_seeded_and_padded() -> None:
    train, val = nw.make_number_pairs(600, 200, seed=3)
    assert not set(train.numbers) & set(val.numbers)
    assert len(set(train.numbers)) == 600 and len(set(val.numbers)) == 200
    again, _ = nw.make_number_pairs(600, 200, seed=3)
    other, _ = nw.make_number_pairs(600, 200, seed=4)
    assert torch.equal(train.src, again.src) and torch.equal(train.tgt, again.tgt)
    assert train.numbers != other.numbers
    for i in range(len(train)):
        s, t = int(train.src_lengths[i]), int(train.tgt_lengths[i])
        assert train.src[i, s - 1] == train.src_vocab.eos_id and torch.all(train.src[i, s:] == 0)
        assert train.tgt[i, 0] == train.tgt_vocab.bos_id and train.tgt[i, t - 1] == train.tgt_vocab.eos_id
        assert train.tgt_vocab.decode(train.tgt[i].tolist()) == train.target[i]
    lengths = {len(str(n)) for n in train.numbers}
    assert lengths == set(range(1, 7)), "every digit count should be drawn"


def test_sample_numbers_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="only 99"):
        nw.sample_numbers(100, max_digits=2)
    assert sorted(nw.sample_numbers(9, max_digits=1)) == list(range(1, 10))


# --------------------------------------------------------------------------- attention proofs


def _dot_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    S = torch.randn(3, 6, 5, generator=gen, dtype=f64)
    h = torch.randn(3, 5, generator=gen, dtype=f64)
    mask = torch.arange(6) < torch.tensor([6, 4, 2])[:, None]
    g = torch.randn(3, 5, generator=gen, dtype=f64)
    return S, h, mask, g


def test_dot_attention_equals_scaled_dot_product_attention_with_scale_one() -> None:
    S, h, mask, _ = _dot_problem()
    z, alpha = s2s.dot_attention(S, h, mask)
    lib = F.scaled_dot_product_attention(h[:, None], S, S, attn_mask=mask[:, None], scale=1.0)[:, 0]
    assert rel_error(z, lib) < 1e-12
    assert torch.all(alpha[~mask] == 0) and torch.allclose(alpha.sum(-1), torch.ones(3, dtype=f64))


def test_planted_bug_dot_attention_without_mask_attends_to_padding() -> None:
    S, h, mask, _ = _dot_problem()
    lib = F.scaled_dot_product_attention(h[:, None], S, S, attn_mask=mask[:, None], scale=1.0)[:, 0]
    assert rel_error(s2s.dot_attention(S, h)[0], lib) > 1e-2


def _dot_grads(backward):
    S, h, mask, g = _dot_problem(1)
    S_, h_ = S.clone().requires_grad_(True), h.clone().requires_grad_(True)
    auto = torch.autograd.grad((s2s.dot_attention(S_, h_, mask)[0] * g).sum(), [S_, h_])
    hand = backward(g, S, h, mask)
    return compare({"S": hand["S"], "h": hand["h"]}, {"S": auto[0], "h": auto[1]})


def test_dot_attention_backward_matches_autograd() -> None:
    _dot_grads(s2s.dot_attention_backward).assert_ok()


def test_planted_bug_dot_backward_without_key_path_is_caught() -> None:
    def buggy(g, S, h, mask):
        alpha = s2s.dot_attention(S, h, mask)[1]
        return {**s2s.dot_attention_backward(g, S, h, mask), "S": alpha.unsqueeze(-1) * g.unsqueeze(1)}

    report = _dot_grads(buggy)
    assert report.errors["S"] > 1e-2 and report.errors["h"] < 1e-8


def test_planted_bug_dot_backward_ignoring_the_mask_is_caught() -> None:
    report = _dot_grads(lambda g, S, h, mask: s2s.dot_attention_backward(g, S, h, None))
    assert max(report.errors.values()) > 1e-2


def test_dot_attention_backward_passes_gradcheck() -> None:
    S, h, mask, _ = _dot_problem(2)

    class Dot(torch.autograd.Function):
        @staticmethod
        def forward(ctx, S, h):
            ctx.save_for_backward(S, h)
            return s2s.dot_attention(S, h, mask)[0]

        @staticmethod
        def backward(ctx, g):
            grads = s2s.dot_attention_backward(g, *ctx.saved_tensors, mask)
            return grads["S"], grads["h"]

    assert gradcheck64(Dot.apply, [S, h])


def _additive_masked(backward):
    p = cap.random_attention_problem(batch=2, positions=6, dim=4, hidden=3, attn_dim=5, seed=4)
    mask = torch.arange(6) < torch.tensor([6, 3])[:, None]
    g = torch.randn(2, 4, generator=torch.Generator().manual_seed(5), dtype=f64)
    leaves = {k: t.clone().requires_grad_(True) for k, t in p.items()}
    auto = torch.autograd.grad((cap.additive_attention(**leaves, mask=mask)[0] * g).sum(), list(leaves.values()))
    hand = backward(g, **p, mask=mask)
    return compare({k: hand[k] for k in p}, dict(zip(p, auto)))


def test_masked_additive_attention_backward_matches_autograd() -> None:
    _additive_masked(cap.additive_attention_backward).assert_ok()


def test_planted_bug_additive_backward_ignoring_the_mask_is_caught() -> None:
    report = _additive_masked(lambda g, mask=None, **p: cap.additive_attention_backward(g, **p))
    assert max(report.errors.values()) > 1e-2


def test_masked_additive_attention_ignores_the_padding() -> None:
    p = cap.random_attention_problem(batch=1, positions=6, dim=4, hidden=3, attn_dim=5, seed=6)
    mask = (torch.arange(6) < 4)[None]
    z_pad, alpha = cap.additive_attention(**p, mask=mask)
    z_short, _ = cap.additive_attention(**{**p, "A": p["A"][:, :4]})
    assert rel_error(z_pad, z_short) < 1e-12 and torch.all(alpha[:, 4:] == 0)
    assert rel_error(cap.additive_attention(**p)[0], z_short) > 1e-3  # without the mask, the padding counts


# --------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def pairs():
    return nw.make_number_pairs(64, 16, seed=1)


@pytest.mark.parametrize("kind", ["additive", "dot"])
def test_padding_does_not_change_a_translation(pairs, kind: str) -> None:
    train, _ = pairs
    torch.manual_seed(0)
    model = s2s.Seq2Seq(len(train.src_vocab), len(train.tgt_vocab), 8, 12, attention=kind, attn_dim=6).double()
    i_long, i_short = int(train.src_lengths.argmax()), int(train.src_lengths.argmin())
    src, lengths = train.src[[i_long, i_short]], train.src_lengths[[i_long, i_short]]
    with torch.no_grad():
        batch, alphas = model(src, lengths, train.tgt[[i_long, i_short], :-1])
        alone, _ = model(src[[1], : int(lengths[1])], lengths[[1]], train.tgt[[i_short], :-1])
    assert rel_error(batch[1], alone[0]) < 1e-12
    assert torch.all(alphas[1, :, int(lengths[1]):] == 0)


def test_planted_bug_an_unpacked_encoder_reads_the_padding(pairs) -> None:
    train, _ = pairs
    torch.manual_seed(0)
    model = s2s.Seq2Seq(len(train.src_vocab), len(train.tgt_vocab), 8, 12).double()
    i_long, i_short = int(train.src_lengths.argmax()), int(train.src_lengths.argmin())
    src, lengths = train.src[[i_long, i_short]], train.src_lengths[[i_long, i_short]]
    packed = pack_padded_sequence(model.src_embedding(src), lengths, batch_first=True, enforce_sorted=False)
    right = pad_packed_sequence(model.encoder(packed)[0], batch_first=True)[0]
    unpacked = model.encoder(model.src_embedding(src))[0]  # the bug: the backward GRU starts in the padding
    n = int(lengths[1])
    assert rel_error(unpacked[1, :n], right[1, :n]) > 1e-3
    assert rel_error(unpacked[0], right[0]) < 1e-12  # the longest sentence has no padding: no difference


def test_free_running_reads_its_own_words(pairs) -> None:
    train, _ = pairs
    torch.manual_seed(0)
    model = s2s.Seq2Seq(len(train.src_vocab), len(train.tgt_vocab), 8, 12).eval()
    tgt_in = train.tgt[:8, :-1]
    with torch.no_grad():
        teacher, _ = model(train.src[:8], train.src_lengths[:8], tgt_in)
        own, _ = model(train.src[:8], train.src_lengths[:8], tgt_in, feed="own")
        greedy = model.translate(train.src[:8], train.src_lengths[:8], beam=1, max_len=tgt_in.shape[1])
    assert torch.equal(teacher[:, 0], own[:, 0])  # the first step reads <bos> either way
    T = greedy.tokens.shape[1]
    assert torch.equal(own.argmax(-1)[:, :T][greedy.tokens != 0], greedy.tokens[greedy.tokens != 0])
    with pytest.raises(ValueError, match="feed"):
        model(train.src[:2], train.src_lengths[:2], tgt_in[:2], feed="sometimes")


def test_accuracy_after_first_error_by_hand() -> None:
    targets = torch.tensor([[5, 6, 7, 2], [5, 6, 2, 0]])
    V = 8

    def logits(rows):
        return F.one_hot(torch.tensor(rows), V).float()

    teacher = logits([[5, 1, 7, 2], [5, 6, 2, 0]])  # sentence 0: first error at position 1
    own = logits([[5, 1, 1, 1], [5, 6, 2, 0]])
    assert s2s.accuracy_after_first_error(teacher, own, targets) == (1.0, 0.0, 1)
    assert s2s.free_running_accuracy(teacher, targets) == (pytest.approx(6 / 7), 0.5)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", ["additive", "dot"])
def test_beam_width_one_is_greedy(pairs, kind: str) -> None:
    _, val = pairs
    torch.manual_seed(2)
    model = s2s.Seq2Seq(len(val.src_vocab), len(val.tgt_vocab), 8, 12, attention=kind).eval()
    greedy = model.translate(val.src, val.src_lengths, beam=1, max_len=15)
    state, memory = model.encode(val.src, val.src_lengths)
    beam1 = s2s.beam_search(model.step, state, memory, model.bos_id, model.eos_id, model.pad_id, beam=1, max_len=15)
    assert torch.equal(beam1.tokens, greedy.tokens) and torch.equal(beam1.lengths, greedy.lengths)
    assert torch.allclose(beam1.scores, greedy.scores) and torch.allclose(beam1.alphas, greedy.alphas)
    beam3 = model.translate(val.src, val.src_lengths, beam=3, max_len=15)
    assert beam3.tokens.shape[0] == len(val)
    with pytest.raises(ValueError, match="beam"):
        s2s.beam_search(model.step, state, memory, 1, 2, 0, beam=0)


# --------------------------------------------------------------------------- BLEU


def _corpus(seed: int):
    gen = torch.Generator().manual_seed(seed)
    words = list("abcdef")

    def sentence(n):
        return [words[i] for i in torch.randint(0, 4, (n,), generator=gen).tolist()]

    refs = [[sentence(int(torch.randint(4, 9, (1,), generator=gen))) for _ in range(2)] for _ in range(12)]
    cands = [rs[0][:4] + sentence(int(torch.randint(2, 7, (1,), generator=gen))) for rs in refs]  # some overlap
    return cands, refs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corpus_bleu_matches_torchmetrics(seed: int) -> None:
    cands, refs = _corpus(seed)
    ours = s2s.corpus_bleu(cands, refs)
    lib = BLEUScore(n_gram=4)([" ".join(c) for c in cands], [[" ".join(r) for r in rs] for rs in refs]).item()
    assert ours > 0 and abs(ours - lib) < 1e-6  # torchmetrics counts in float32


def _bleu_without_clipping(cands, refs, n_gram=4):
    """The planted bug: every candidate n-gram found in a reference counts, however often it repeats."""
    import math

    matched, total = [0] * n_gram, [0] * n_gram
    for cand, rs in zip(cands, refs):
        for n in range(1, n_gram + 1):
            grams = [tuple(cand[i : i + n]) for i in range(len(cand) - n + 1)]
            found = {tuple(r[i : i + n]) for r in rs for i in range(len(r) - n + 1)}
            matched[n - 1] += sum(g in found for g in grams)
            total[n - 1] += len(grams)
    c = sum(map(len, cands))
    r = sum(min((len(x) for x in rs), key=lambda m: abs(m - len(cand))) for cand, rs in zip(cands, refs))
    return min(1.0, math.exp(1 - r / c)) * math.exp(sum(math.log(m / t) for m, t in zip(matched, total)) / n_gram)


def test_planted_bug_bleu_without_clipping_is_caught() -> None:
    cands, refs = [["a", "a", "a", "b", "c"]], [[["a", "b", "c", "d", "e"]]]
    lib = BLEUScore(n_gram=1)([" ".join(c) for c in cands], [[" ".join(r) for r in rs] for rs in refs]).item()
    assert s2s.corpus_bleu(cands, refs, n_gram=1) == pytest.approx(lib) == pytest.approx(0.6)
    assert abs(_bleu_without_clipping(cands, refs, n_gram=1) - lib) > 0.3  # "a a a" would count three times


def test_bleu_is_one_for_perfect_and_zero_without_a_four_gram() -> None:
    refs = [[["one", "hundred", "and", "five"]]]
    assert s2s.corpus_bleu([["one", "hundred", "and", "five"]], refs) == pytest.approx(1.0)
    assert s2s.corpus_bleu([["one", "hundred", "five", "and"]], refs) == 0.0
