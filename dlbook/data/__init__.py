"""Datasets: a checksummed registry, a mirror-aware fetcher and the loaders built on them."""

from .augment import RandomCropFlip
from .captions import CaptionData, CaptionVocab, load_captions, make_captions, reference_captions
from .cifar import CIFAR10_CLASSES, CifarSplits, load_cifar10
from .digit_strings import DigitStrings, load_digit_strings, make_digit_strings
from .download import ChecksumError, MissingDataError, cache_dir, fetch, sha256_of, verify
from .fashion_mnist import FASHION_CLASSES, FASHION_MEAN, FASHION_STD, load_fashion_mnist, stratified_split
from .fsdd import (
    FSDD,
    FSDD_RATE,
    FSDD_SPEAKERS,
    WavFormatError,
    load_fsdd,
    load_recording,
    read_wav,
    speaker_split,
)
from .mnist import Splits, load_mnist
from .moving_digits import MovingDigits, load_moving_digits, make_moving_digits
from .registry import REGISTRY, DataFile, lookup
from .series import Series, load_sunspots, make_windows
from .text import (
    CharCorpus,
    PolarityData,
    Vocab,
    char_windows,
    load_polarity,
    load_shakespeare,
    pad_batch,
    tokenize,
)

__all__ = [
    "REGISTRY", "ChecksumError", "DataFile", "MissingDataError", "Splits",
    "cache_dir", "fetch", "load_mnist", "lookup", "sha256_of", "verify",
]
__all__ += ["FASHION_CLASSES", "FASHION_MEAN", "FASHION_STD", "load_fashion_mnist", "stratified_split"]
__all__ += ["CIFAR10_CLASSES", "CifarSplits", "load_cifar10"]
__all__ += ["Series", "load_sunspots", "make_windows"]
__all__ += ["CharCorpus", "PolarityData", "Vocab", "char_windows", "load_polarity", "load_shakespeare",
            "pad_batch", "tokenize"]
__all__ += ["CaptionData", "CaptionVocab", "load_captions", "make_captions", "reference_captions",
            "DigitStrings", "load_digit_strings", "make_digit_strings",
            "MovingDigits", "load_moving_digits", "make_moving_digits"]
__all__ += ["RandomCropFlip"]
__all__ += ["FSDD", "FSDD_RATE", "FSDD_SPEAKERS", "WavFormatError", "load_fsdd", "load_recording", "read_wav", "speaker_split"]
