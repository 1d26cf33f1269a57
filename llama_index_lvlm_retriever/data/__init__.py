"""Records, loaders, image decoding and the ELPV dataset.

Importing this package does not import the optional ``elpv-dataset`` package;
:func:`load_elpv_splits` imports it only when called without ``dataset=``.
"""

from llama_index_lvlm_retriever.data.elpv import (
    ELPV_CITATION,
    ELPV_LABEL_NAMES,
    ELPV_LICENSE,
    ElpvSplits,
    elpv_caption,
    load_elpv_splits,
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
    "Case",
    "ElpvSplits",
    "ImageInput",
    "ImageLoadError",
    "KBItem",
    "elpv_caption",
    "image_content_hash",
    "load_elpv_splits",
    "load_image",
]
