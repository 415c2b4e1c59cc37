"""Numbers written three ways, a translation task with real structure that is generated offline.

One integer ``n`` (1 <= n <= 999,999) has three spellings, each a token sequence:

* **English words** (British usage, with "and"): 312 -> ``three hundred and twelve``; 45 ->
  ``forty-five``; 12,005 -> ``twelve thousand and five``; 120,340 -> ``one hundred and twenty
  thousand three hundred and forty``. English groups the digits by **thousands** (10^3).
  Tokens: the words, with the hyphen of "forty-five" a token of its own, so a sentence is rebuilt
  exactly (:func:`detokenize_english`).
* **Chinese numerals** (formal 二, not colloquial 两): 312 -> ``三百一十二``; 12,005 -> ``一万二千零五``;
  120,340 -> ``十二万零三百四十``. Chinese groups the digits by **ten-thousands** (万 = 10^4). One
  token per character. The two rules that trip learners, both tested:

  - **零 (zero)**: inside a number, a run of one or more zero digits *between* two non-zero digits is
    read as one 零 (105 -> 一百零五, 1,005 -> 一千零五, 10,500 -> 一万零五百); zeros at the end are not
    read (1,500 -> 一千五百). 万 marks its own place, so zeros that end the 万 group are not read
    (101,000 -> 十万一千), but a group below 万 that starts with a zero is (10,100 -> 一万零一百,
    100,020 -> 十万零二十).
  - **一十 (one ten)**: a 十 that *starts* the whole number drops its 一 (10 -> 十, 15 -> 十五,
    150,000 -> 十五万); anywhere else it keeps it (115 -> 一百一十五, 10,010 -> 一万零一十,
    110,000 -> 十一万 but 1,110 -> 一千一百一十).
* **digits**: ``312`` -> ``3 1 2``, one token per digit.

:func:`make_number_pairs` draws distinct numbers with a seeded generator and splits them **by
number** into training and held-out sets, so no held-out number (in any spelling) was seen in
training; the number of digits is drawn uniformly first, so one- to six-digit numbers are equally
common (uniform draws would be almost all six-digit numbers).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .captions import CaptionVocab

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
CN_DIGITS = "零一二三四五六七八九"
CN_UNITS = ["", "十", "百", "千"]
MAX_NUMBER = 999_999
LANGUAGES = ("en", "zh", "digits")


def _check(n: int) -> None:
    if not isinstance(n, int) or not 1 <= n <= MAX_NUMBER:
        raise ValueError(f"numbers from 1 to {MAX_NUMBER:,} are supported, got {n!r}")


def _english_below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    words = []
    if hundreds:
        words.append(f"{ONES[hundreds]} hundred")
    if rest:
        if hundreds:
            words.append("and")  # British: "three hundred and twelve"
        words.append(ONES[rest] if rest < 20 else TENS[rest // 10] + (f"-{ONES[rest % 10]}" if rest % 10 else ""))
    return " ".join(words)


def english(n: int) -> str:
    """``n`` in English words, British style: "and" before the last two digits when anything precedes them.

    12,005 -> "twelve thousand and five"; 100,100 -> "one hundred thousand one hundred"."""
    _check(n)
    thousands, rest = divmod(n, 1000)
    words = []
    if thousands:
        words.append(f"{_english_below_1000(thousands)} thousand")
    if rest:
        if thousands and rest < 100:
            words.append("and")  # "one thousand and five", but "one thousand two hundred"
        words.append(_english_below_1000(rest))
    return " ".join(words)


def chinese(n: int) -> str:
    """``n`` in Chinese numerals, with the 零 and 一十 rules of the module docstring."""
    _check(n)
    digits = [int(d) for d in str(n)]
    out: list[str] = []
    pending_zero = False
    for i, d in enumerate(digits):
        place = len(digits) - 1 - i  # 0 = units ... 5 = 十万
        if d == 0:
            pending_zero = bool(out)  # a zero after something read: read one 零 if a non-zero digit follows
        else:
            if pending_zero:
                out.append("零")
                pending_zero = False
            if not (d == 1 and place % 4 == 1 and not out):  # 一十 rule: a leading 十 drops its 一
                out.append(CN_DIGITS[d])
            out.append(CN_UNITS[place % 4])
        if place == 4 and n >= 10_000:
            out.append("万")  # 万 marks the place: zeros that end the 万 group are not read
            pending_zero = False
    return "".join(out)


def digits(n: int) -> str:
    """``n`` in Arabic digits."""
    _check(n)
    return str(n)


PINYIN = {"零": "líng 0", "一": "yī 1", "二": "èr 2", "三": "sān 3", "四": "sì 4", "五": "wǔ 5", "六": "liù 6",
          "七": "qī 7", "八": "bā 8", "九": "jiǔ 9", "十": "shí ×10", "百": "bǎi ×100", "千": "qiān ×1000",
          "万": "wàn ×10⁴"}


def romanize(token: str) -> str:
    """A Chinese numeral token as pinyin and its value (``"万" -> "wàn ×10⁴"``), for figure labels:
    matplotlib's default fonts have no Chinese glyphs. Other tokens are returned unchanged."""
    return PINYIN.get(token, token)


SPELL = {"en": english, "zh": chinese, "digits": digits}


def tokenize(text: str, language: str) -> list[str]:
    """English: words, the hyphen a token of its own; Chinese and digits: one token per character."""
    if language == "en":
        return re.findall(r"[a-z]+|-", text)
    if language in ("zh", "digits"):
        return list(text.replace(" ", ""))
    raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")


def detokenize(tokens: Sequence[str], language: str) -> str:
    """The inverse of :func:`tokenize`: ``detokenize(tokenize(s, lang), lang) == s``."""
    if language == "en":
        return " ".join(tokens).replace(" - ", "-")
    return "".join(tokens)


def vocabulary(language: str) -> CaptionVocab:
    """The fixed token table of a language (``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3),
    built from the grammar, not from data, so every split shares it."""
    if language == "en":
        words = [*ONES, *TENS[2:], "hundred", "thousand", "and", "-"]
    elif language == "zh":
        words = [*CN_DIGITS, *CN_UNITS[1:], "万"]
    elif language == "digits":
        words = list("0123456789")
    else:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return CaptionVocab(words)


def sample_numbers(count: int, seed: int = 0, max_digits: int = 6) -> list[int]:
    """``count`` distinct numbers: the number of digits uniform in 1..``max_digits``, then the number
    uniform among those with that many digits (so short numbers are not swamped by six-digit ones)."""
    if not 1 <= max_digits <= 6:
        raise ValueError(f"max_digits must be 1 to 6, got {max_digits}")
    available = 10**max_digits - 1
    if count > available:
        raise ValueError(f"only {available:,} numbers have at most {max_digits} digits, {count:,} asked")
    rng = random.Random(seed)
    chosen: dict[int, None] = {}
    while len(chosen) < count:
        k = rng.randint(1, max_digits)
        n = rng.randint(10 ** (k - 1), 10**k - 1)
        chosen[n] = None  # a repeat is a no-op: the draws go on until count distinct numbers
    return list(chosen)


@dataclass
class NumberPairs:
    """Parallel spellings of ``numbers`` as padded id tensors.

    ``src`` int64 (N, S): source tokens then ``<eos>``, right-padded with ``<pad>`` = 0; ``src_lengths`` (N,).
    ``tgt`` int64 (N, T): ``<bos>`` target tokens ``<eos>``, right-padded; ``tgt_lengths`` (N,) counts both.
    ``source``/``target``: the token lists; ``src_vocab``/``tgt_vocab`` their tables.
    """

    numbers: list[int]
    src_language: str
    tgt_language: str
    source: list[list[str]]
    target: list[list[str]]
    src: Tensor
    src_lengths: Tensor
    tgt: Tensor
    tgt_lengths: Tensor
    src_vocab: CaptionVocab
    tgt_vocab: CaptionVocab

    def __len__(self) -> int:
        return len(self.numbers)

    def describe(self) -> str:
        return (f"{len(self):,} numbers {self.src_language} -> {self.tgt_language}, source up to "
                f"{int(self.src_lengths.max())} tokens, target up to {int(self.tgt_lengths.max())} with <bos>/<eos>")


def _pad(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(r) for r in rows])
    out = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out, lengths


def encode_pairs(numbers: Sequence[int], src_language: str = "zh", tgt_language: str = "en") -> NumberPairs:
    """Tokenise the two spellings of every number and pad them into tensors (see :class:`NumberPairs`)."""
    src_vocab, tgt_vocab = vocabulary(src_language), vocabulary(tgt_language)
    source = [tokenize(SPELL[src_language](n), src_language) for n in numbers]
    target = [tokenize(SPELL[tgt_language](n), tgt_language) for n in numbers]
    src, src_lengths = _pad([src_vocab.encode(s, wrap=False) + [src_vocab.eos_id] for s in source])
    tgt, tgt_lengths = _pad([tgt_vocab.encode(t) for t in target])
    return NumberPairs(list(numbers), src_language, tgt_language, source, target, src, src_lengths, tgt,
                       tgt_lengths, src_vocab, tgt_vocab)


def make_number_pairs(
    n_train: int, n_val: int, src_language: str = "zh", tgt_language: str = "en", seed: int = 0, max_digits: int = 6
) -> tuple[NumberPairs, NumberPairs]:
    """Training and held-out pairs on **disjoint numbers**: ``n_train + n_val`` distinct numbers are
    drawn (:func:`sample_numbers`) and the last ``n_val`` are held out. The same arguments give the
    same pairs on every machine."""
    numbers = sample_numbers(n_train + n_val, seed, max_digits)
    return (encode_pairs(numbers[:n_train], src_language, tgt_language),
            encode_pairs(numbers[n_train:], src_language, tgt_language))
