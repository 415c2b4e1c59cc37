"""The datasets the course uses: where each file comes from, its checksum and its licence.

A file's ``key`` is also its path inside a mirror (``$DLBOOK_DATA_MIRROR/<key>``) and inside the
local cache, so one mirror folder serves every machine in an offline classroom.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class DataFile:
    """One downloadable file, identified by ``key`` (e.g. ``mnist/t10k-images-idx3-ubyte.gz``)."""

    key: str
    url: str
    sha256: str
    license: str
    description: str
    # True when ``sha256`` is of the gunzipped bytes: the upstream and Debian's recompressed
    # ``.gz`` files differ as bytes but hold the same data, and both must verify.
    content_sha256: bool = False
    # Where else an offline machine can get the file (e.g. a Debian package), for error messages.
    offline_hint: str = ""

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1]


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's first MNIST mirror
_MNIST_LICENSE = "CC BY-SA 3.0 (Y. LeCun, C. Cortes, C. J. C. Burges)"

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # Zalando's release
_FASHION_LICENSE = "MIT (Zalando SE); cite Xiao, Rasul & Vollgraf 2017"
_FASHION_HINT = (
    "Debian's package has the same files: `apt-get install dataset-fashion-mnist` puts them in "
    "/usr/share/datasets/fashion-mnist/, which is searched automatically "
    "(or set DLBOOK_DATA_MIRROR=/usr/share/datasets)"
)


def _fashion(name: str, sha256: str, description: str) -> DataFile:
    return DataFile(f"fashion-mnist/{name}", _FASHION_URL + name, sha256, _FASHION_LICENSE, description,
                    content_sha256=True, offline_hint=_FASHION_HINT)


REGISTRY: dict[str, DataFile] = {
    f.key: f
    for f in [
        DataFile(
            "mnist/train-images-idx3-ubyte.gz",
            _MNIST_URL + "train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            _MNIST_LICENSE,
            "MNIST training images, 60,000 x 28 x 28 (IDX3)",
        ),
        DataFile(
            "mnist/train-labels-idx1-ubyte.gz",
            _MNIST_URL + "train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            _MNIST_LICENSE,
            "MNIST training labels, 60,000 (IDX1)",
        ),
        DataFile(
            "mnist/t10k-images-idx3-ubyte.gz",
            _MNIST_URL + "t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            _MNIST_LICENSE,
            "MNIST test images, 10,000 x 28 x 28 (IDX3)",
        ),
        DataFile(
            "mnist/t10k-labels-idx1-ubyte.gz",
            _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            _MNIST_LICENSE,
            "MNIST test labels, 10,000 (IDX1)",
        ),
        _fashion("train-images-idx3-ubyte.gz",
                 "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                 "Fashion-MNIST training images, 60,000 x 28 x 28 (IDX3)"),
        _fashion("train-labels-idx1-ubyte.gz",
                 "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                 "Fashion-MNIST training labels, 60,000 (IDX1)"),
        _fashion("t10k-images-idx3-ubyte.gz",
                 "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                 "Fashion-MNIST test images, 10,000 x 28 x 28 (IDX3)"),
        _fashion("t10k-labels-idx1-ubyte.gz",
                 "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                 "Fashion-MNIST test labels, 10,000 (IDX1)"),
        DataFile(
            "tinyshakespeare/input.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "public domain text",
            "Tiny Shakespeare, 1,115,394 characters",
        ),
        DataFile(
            "rt-polarity/rt-polarity.pos",
            "https://raw.githubusercontent.com/dennybritz/cnn-text-classification-tf/master/data/rt-polaritydata/rt-polarity.pos",
            "4134882974a28d0c7b5151256f0e33a6169984ee7372c279e673f1114f475d58",
            "free for research use; cite Pang & Lee, ACL 2005",
            "Sentence polarity v1.0, 5,331 positive sentences",
        ),
        DataFile(
            "rt-polarity/rt-polarity.neg",
            "https://raw.githubusercontent.com/dennybritz/cnn-text-classification-tf/master/data/rt-polaritydata/rt-polarity.neg",
            "2d11cfbc790f1cd96d78339f41ce53ced1efa83cd22d37d6788fa3fe3d17e2fd",
            "free for research use; cite Pang & Lee, ACL 2005",
            "Sentence polarity v1.0, 5,331 negative sentences",
        ),
        DataFile(
            "cifar10/cifar-10-python.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            "freely available for research; cite Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images (tech. report)",
            "CIFAR-10 python version: 60,000 32x32 colour images in 10 classes (5 training batches + test batch)",
        ),
    ]
}


# --- the Free Spoken Digit Dataset: 3,000 small WAV files, each registered and checked ----------
FSDD_VERSION = "v1.0.10"
FSDD_URL = f"https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/{FSDD_VERSION}/recordings/"
FSDD_LICENSE = "CC BY-SA 4.0 (Z. Jackson et al., Free Spoken Digit Dataset)"
#: the package-data file holding ``<sha256>  <file name>`` for every recording (shipped with the
#: wheel: pyproject.toml's package-data), so the registry stays readable instead of 3,000 entries.
FSDD_SUMS = "fsdd_sha256.txt"


def fsdd_checksums() -> dict[str, str]:
    """``{file name: sha256}`` of the 3,000 FSDD recordings, read from the package's checksum file."""
    text = resources.files(__package__).joinpath(FSDD_SUMS).read_text(encoding="utf-8")
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            sums[name] = digest
    return sums


def fsdd_key(name: str) -> str:
    """The registry key of the recording ``name`` (e.g. ``3_theo_12.wav``)."""
    return f"fsdd/recordings/{name}"


REGISTRY.update(
    (fsdd_key(name), DataFile(fsdd_key(name), FSDD_URL + name, digest, FSDD_LICENSE,
                              f"FSDD {FSDD_VERSION} recording {name} (mono 8 kHz 16-bit WAV)"))
    for name, digest in fsdd_checksums().items()
)


def lookup(key: str) -> DataFile:
    """The registry entry for ``key``, or a ``KeyError`` listing the known keys."""
    try:
        return REGISTRY[key]
    except KeyError:
        known = ", ".join(sorted(k for k in REGISTRY if not k.startswith("fsdd/")))
        known += f" and {sum(k.startswith('fsdd/') for k in REGISTRY):,} fsdd/recordings/<digit>_<speaker>_<take>.wav"
        raise KeyError(f"no dataset file {key!r} in the registry; known files: {known}") from None
