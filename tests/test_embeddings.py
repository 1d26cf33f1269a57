from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from llama_index.core.bridge.pydantic import ValidationError
from PIL import Image
from transformers import AutoModel, AutoProcessor

from llama_index_lvlm_retriever.data.images import ImageLoadError, load_image
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_siglip

PROJECTION_DIM = 16
MAX_TEXT_LENGTH = 32
TEXTS = [
    "frontal chest radiograph",
    "mild cardiomegaly with a small left pleural effusion and basilar atelectasis",
    "x",
    "no acute cardiopulmonary process",
    "melanoma",
]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(
        tmp_path_factory.mktemp("clip"),
        projection_dim=PROJECTION_DIM,
        max_text_length=MAX_TEXT_LENGTH,
        seed=0,
    )


@pytest.fixture(scope="module")
def embed(clip_dir: Path) -> CLIPEmbedding:
    # Batch size 2 with 5 items: two full batches and a partial one.
    return CLIPEmbedding.from_pretrained(clip_dir, embed_batch_size=2)


def _random_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    # Different sizes, so resizing/cropping is exercised per image within a batch.
    return [
        Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 30 + 6 * i, 3), dtype=np.uint8))
        for i in range(count)
    ]


def _png(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


def test_from_pretrained_loads_the_saved_folder(embed: CLIPEmbedding, clip_dir: Path) -> None:
    assert embed.class_name() == "CLIPEmbedding"
    assert embed.model_name == str(clip_dir)
    assert type(embed.model).__name__ == "CLIPModel"
    assert embed.torch_device == torch.device("cpu")
    assert embed.max_length == MAX_TEXT_LENGTH  # defaults to the text position limit
    assert embed.embed_dim == PROJECTION_DIM


def test_image_vectors_match_a_hand_computed_forward(embed: CLIPEmbedding, clip_dir: Path) -> None:
    images = _random_images(3)
    got = embed.embed_images(images)
    model = AutoModel.from_pretrained(clip_dir).eval()
    processor = AutoProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        raw = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert got.shape == (3, PROJECTION_DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.ones(3), atol=1e-5)


def test_normalize_off_returns_the_raw_projection(clip_dir: Path) -> None:
    raw_embed = CLIPEmbedding.from_pretrained(clip_dir, normalize=False)
    normed_embed = CLIPEmbedding.from_pretrained(clip_dir)
    raw = raw_embed.embed_texts(TEXTS)
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / norms[:, None], normed_embed.embed_texts(TEXTS), atol=1e-5)


def test_text_vectors_are_unit_length_with_the_projection_dim(embed: CLIPEmbedding) -> None:
    vectors = embed.embed_texts(TEXTS)
    assert vectors.shape == (len(TEXTS), PROJECTION_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), np.ones(len(TEXTS)), atol=1e-5)


def test_batched_images_equal_one_at_a_time(embed: CLIPEmbedding) -> None:
    images = _random_images(5)
    batched = embed.embed_images(images)
    single = np.stack([embed.embed_images([image])[0] for image in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # Different images really give different vectors (the check above is not vacuous).
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


def test_batched_texts_equal_one_at_a_time(embed: CLIPEmbedding) -> None:
    batched = embed.embed_texts(TEXTS, batch_size=3)
    single = np.stack([embed.embed_texts([text])[0] for text in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


def test_every_image_input_kind_gives_the_same_vector(embed: CLIPEmbedding, tmp_path: Path) -> None:
    image = _random_images(1)[0]
    path = _png(tmp_path / "case.png", image)
    data = path.read_bytes()
    inputs = [path, str(path), data, io.BytesIO(data), Image.open(path)]
    vectors = embed.embed_images(inputs)
    for vector in vectors[1:]:
        np.testing.assert_allclose(vector, vectors[0], atol=1e-6)


def test_dicom_files_embed(embed: CLIPEmbedding) -> None:
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    paths = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    for path in paths:
        decoded = load_image(path)
        assert decoded.mode == "RGB"
        assert np.asarray(decoded).dtype == np.uint8
    vectors = embed.embed_images(paths)
    assert vectors.shape == (2, PROJECTION_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), np.ones(2), atol=1e-5)
    # The DICOM path and its decoded image embed identically.
    np.testing.assert_allclose(vectors[0], embed.embed_images([load_image(paths[0])])[0], atol=1e-6)


def test_long_text_is_truncated(embed: CLIPEmbedding) -> None:
    report = " ".join(["the lungs are clear without focal consolidation"] * 60)
    assert len(embed.processor.tokenizer(report).input_ids) > 10 * MAX_TEXT_LENGTH
    vectors = embed.embed_texts([report, report + " but a new right lower lobe opacity", "left"])
    # Everything past MAX_TEXT_LENGTH tokens is cut, so a different tail changes nothing ...
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    # ... while a different text does change the vector.
    assert np.abs(vectors[0] - vectors[2]).max() > 1e-3


def test_explicit_max_length_truncates_earlier(clip_dir: Path) -> None:
    short = CLIPEmbedding.from_pretrained(clip_dir, max_length=4)
    first, second = "chest radiograph effusion", "chest radiograph atelectasis"
    ids_first = short.processor.tokenizer(first).input_ids
    ids_second = short.processor.tokenizer(second).input_ids
    # Same first three ids (<|startoftext|> + the shared words), different afterwards.
    assert ids_first[:3] == ids_second[:3] and ids_first != ids_second
    # max_length=4 keeps those three ids plus <|endoftext|>, so the two texts embed the same.
    vectors = short.embed_texts([first, second])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    full = CLIPEmbedding.from_pretrained(clip_dir).embed_texts([first, second])
    assert np.abs(full[0] - full[1]).max() > 1e-3


def test_max_length_above_the_model_limit_is_refused(clip_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"max_length=99 exceeds the 32 text positions"):
        CLIPEmbedding.from_pretrained(clip_dir, max_length=99)


def test_fingerprint_tracks_the_weights(
    embed: CLIPEmbedding, clip_dir: Path, tmp_path: Path
) -> None:
    reloaded = CLIPEmbedding.from_pretrained(clip_dir)
    other = CLIPEmbedding.from_pretrained(
        build_tiny_clip(
            tmp_path / "seed1",
            projection_dim=PROJECTION_DIM,
            max_text_length=MAX_TEXT_LENGTH,
            seed=1,
        )
    )
    assert len(embed.fingerprint()) == 16
    int(embed.fingerprint(), 16)  # hex digits
    assert reloaded.fingerprint() == embed.fingerprint()
    assert other.fingerprint() != embed.fingerprint()


def test_fingerprint_depends_on_every_tensor(clip_dir: Path) -> None:
    first = CLIPEmbedding.from_pretrained(clip_dir)
    second = CLIPEmbedding.from_pretrained(clip_dir)
    with torch.no_grad():
        second.model.logit_scale.add_(1.0)  # a 0-d tensor
    assert second.fingerprint() != first.fingerprint()


def test_missing_model_dir_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match=r"model directory not found: .*no_such_model"):
        CLIPEmbedding.from_pretrained(missing)


def test_dir_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        CLIPEmbedding.from_pretrained(tmp_path)


def test_uncached_hub_id_offline_says_it_needs_a_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"'no-such-org/no-such-clip' .* needs a download"):
        CLIPEmbedding.from_pretrained("no-such-org/no-such-clip")


def test_constructor_loads_model_name_when_nothing_is_injected(
    embed: CLIPEmbedding, clip_dir: Path
) -> None:
    rebuilt = CLIPEmbedding(model_name=str(clip_dir))
    np.testing.assert_allclose(rebuilt.embed_texts(TEXTS), embed.embed_texts(TEXTS), atol=1e-6)


def test_injected_model_and_processor(embed: CLIPEmbedding, clip_dir: Path) -> None:
    model = AutoModel.from_pretrained(clip_dir)
    processor = AutoProcessor.from_pretrained(clip_dir)
    injected = CLIPEmbedding(model=model, processor=processor)
    assert injected.model is model
    assert injected.model_name == str(clip_dir)
    np.testing.assert_allclose(injected.embed_texts(TEXTS), embed.embed_texts(TEXTS), atol=1e-6)


def test_model_without_processor_is_refused(clip_dir: Path) -> None:
    with pytest.raises(ValueError, match="needs model= and processor= together"):
        CLIPEmbedding(model=AutoModel.from_pretrained(clip_dir))


def test_non_dual_encoder_is_refused(clip_dir: Path) -> None:
    text_only = AutoModel.from_pretrained(clip_dir).text_model
    with pytest.raises(TypeError, match="has no get_image_features / get_text_features"):
        CLIPEmbedding(model=text_only, processor=AutoProcessor.from_pretrained(clip_dir))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("device", "gpu0", "device='gpu0' is not a torch device"),
        ("dtype", "float64", "dtype"),
        ("embed_batch_size", 0, "embed_batch_size"),
        ("max_length", 0, "max_length"),
        ("text_padding", "shortest", "text_padding"),
    ],
)
def test_bad_settings_are_refused(clip_dir: Path, field: str, value: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        CLIPEmbedding.from_pretrained(clip_dir, **{field: value})


def test_auto_device_picks_an_available_device(clip_dir: Path) -> None:
    auto = CLIPEmbedding.from_pretrained(clip_dir, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert auto.torch_device.type == expected
    assert next(auto.model.parameters()).device.type == expected


def test_bfloat16_weights_still_give_float32_unit_vectors(
    clip_dir: Path, embed: CLIPEmbedding
) -> None:
    half = CLIPEmbedding.from_pretrained(clip_dir, dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    vectors = half.embed_texts(TEXTS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), np.ones(len(TEXTS)), atol=1e-5)
    # bfloat16 keeps ~3 significant digits: close to the float32 vectors, not equal.
    np.testing.assert_allclose(vectors, embed.embed_texts(TEXTS), atol=5e-2)
    assert half.fingerprint() != embed.fingerprint()


def test_empty_inputs_give_empty_arrays(embed: CLIPEmbedding) -> None:
    assert embed.embed_images([]).shape == (0, PROJECTION_DIM)
    assert embed.embed_texts([]).shape == (0, PROJECTION_DIM)


def test_bad_inputs_are_named(embed: CLIPEmbedding, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"text #1 is a int"):
        embed.embed_texts(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(ImageLoadError, match=r"image file not found: .*ghost\.png"):
        embed.embed_images([tmp_path / "ghost.png"])
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        embed.embed_texts(["a"], batch_size=0)


def test_llama_index_public_api(embed: CLIPEmbedding, tmp_path: Path) -> None:
    images = _random_images(5)
    paths = [str(_png(tmp_path / f"{i}.png", image)) for i, image in enumerate(images)]
    expected_images = embed.embed_images(paths)
    expected_texts = embed.embed_texts(TEXTS)

    image_batch = embed.get_image_embedding_batch(paths)
    text_batch = embed.get_text_embedding_batch(TEXTS)
    assert isinstance(image_batch[0], list) and isinstance(image_batch[0][0], float)
    np.testing.assert_allclose(np.array(image_batch), expected_images, atol=1e-6)
    np.testing.assert_allclose(np.array(text_batch), expected_texts, atol=1e-6)
    np.testing.assert_allclose(embed.get_image_embedding(paths[2]), expected_images[2], atol=1e-6)
    np.testing.assert_allclose(embed.get_query_embedding(TEXTS[1]), expected_texts[1], atol=1e-6)
    np.testing.assert_allclose(embed.get_text_embedding(TEXTS[3]), expected_texts[3], atol=1e-6)

    async def _async_calls() -> tuple[list[float], list[float], list[list[float]]]:
        return (
            await embed.aget_image_embedding(paths[0]),
            await embed.aget_query_embedding(TEXTS[0]),
            await embed.aget_image_embedding_batch(paths),
        )

    image_vec, query_vec, async_batch = asyncio.run(_async_calls())
    np.testing.assert_allclose(image_vec, expected_images[0], atol=1e-6)
    np.testing.assert_allclose(query_vec, expected_texts[0], atol=1e-6)
    np.testing.assert_allclose(np.array(async_batch), expected_images, atol=1e-6)


def test_serialised_settings_rebuild_the_embedding(clip_dir: Path) -> None:
    original = CLIPEmbedding.from_pretrained(
        clip_dir, embed_batch_size=3, max_length=8, normalize=False
    )
    rebuilt = CLIPEmbedding.from_dict(original.to_dict())
    assert (rebuilt.embed_batch_size, rebuilt.max_length, rebuilt.normalize) == (3, 8, False)
    np.testing.assert_allclose(rebuilt.embed_texts(TEXTS), original.embed_texts(TEXTS), atol=1e-6)


def test_siglip_batched_texts_equal_one_at_a_time(tmp_path: Path) -> None:
    siglip = CLIPEmbedding.from_pretrained(build_tiny_siglip(tmp_path / "siglip", hidden=32))
    assert type(siglip.model).__name__ == "SiglipModel"
    assert siglip.embed_dim == 32
    # SigLIP pools the last position: "auto" padding pads every text to max_length.
    batched = siglip.embed_texts(TEXTS)
    single = np.stack([siglip.embed_texts([text])[0] for text in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    images = siglip.embed_images(_random_images(3))
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), np.ones(3), atol=1e-5)
