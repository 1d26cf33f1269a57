"""Records, loaders, image decoding, the ELPV dataset and Fashion-MNIST.

Importing this package does not import the optional ``elpv-dataset`` package;
:func:`load_elpv_splits` imports it only when called without ``dataset=``.
:func:`load_fashion_mnist` reads files only when called.
"""

from llama_index_lvlm_retriever.data.elpv import (
    ELPV_CITATION,
    ELPV_LABEL_NAMES,
    ELPV_LICENSE,
    ElpvSplits,
    elpv_caption,
    load_elpv_splits,
)
from llama_index_lvlm_retriever.data.fashion_mnist import (
    FASHION_MNIST_DEBIAN_DIR,
    FASHION_MNIST_LABEL_NAMES,
    FashionMnist,
    FashionMnistFormatError,
    FashionMnistNotFoundError,
    load_fashion_mnist,
)
from llama_index_lvlm_retriever.data.images import (
    ImageInput,
    ImageLoadError,
    image_content_hash,
    load_image,
)
from llama_index_lvlm_retriever.data.records import Case, KBItem

__all__ = [
    "ELPV_CITATION",
    "ELPV_LABEL_NAMES",
    "ELPV_LICENSE",
    "FASHION_MNIST_DEBIAN_DIR",
    "FASHION_MNIST_LABEL_NAMES",
    "Case",
    "ElpvSplits",
    "FashionMnist",
    "FashionMnistFormatError",
    "FashionMnistNotFoundError",
    "ImageInput",
    "ImageLoadError",
    "KBItem",
    "elpv_caption",
    "image_content_hash",
    "load_elpv_splits",
    "load_fashion_mnist",
    "load_image",
]
