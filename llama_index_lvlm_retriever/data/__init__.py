"""Records, loaders and image decoding."""

from llama_index_lvlm_retriever.data.images import (
    ImageInput,
    ImageLoadError,
    image_content_hash,
    load_image,
)
from llama_index_lvlm_retriever.data.records import Case, KBItem

__all__ = ["Case", "ImageInput", "ImageLoadError", "KBItem", "image_content_hash", "load_image"]
