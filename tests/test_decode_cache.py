"""The decode mode is part of the embedding-cache key, and on the CPU both modes give the same embeddings.

``--decode device`` and ``--decode loader`` never share cached embeddings (on CUDA they differ by about 5e-3
relative: docs/scaling.md).  On the CPU the device path decodes with the same libjpeg-turbo and resizes with
PIL itself, so its batches and embeddings equal the loader path's exactly: the bound the docs state.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from oodml.datasets import load_dataset
from oodml.decode import DeviceBatches, preprocess
from oodml.embedding import EmbedSettings, embed_cached, embedding_cache_dir, read_shards, write_shard
from oodml.preprocessing import Preprocessing

SQUASH = Preprocessing(resize=96, crop=80, resize_mode="squash")  # both sides resized: portraits go vertical-first
LEVEL = 1 / (255 * 0.224)  # one 8-bit level after normalisation, at the smallest std (green)


def photo(height: int, width: int, seed: int) -> bytes:
    """A JPEG (quality 90) of a smooth random colour field with noise: gradients and edges, as in photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(smooth + rng.integers(-12, 13, size=smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six JPEGs in two classes, portrait and landscape (portraits are where a float resize strays most)."""
    root = tmp_path_factory.mktemp("photos")
    for c in range(2):
        (root / f"c{c}").mkdir()
        for k, (height, width) in enumerate([(250, 166), (166, 250), (120, 120)]):
            (root / f"c{c}/{k}.jpg").write_bytes(photo(height, width, seed=10 * c + k))
    return load_dataset("imagefolder", root=root)


class CountingModel(torch.nn.Module):
    """A small random convolutional model that counts the batches it embeds."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=2), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        return self.body(x)


def embedded(ds, model: CountingModel, decode: str, digest: str) -> np.ndarray:
    settings = EmbedSettings("cpu", batch_size=4, decode=decode)
    return embed_cached(ds, model, SQUASH, digest, range(len(ds)), settings=settings)


def test_the_two_decode_modes_use_two_cache_entries_and_agree_on_the_cpu(photos):
    model, digest = CountingModel(), "a1" * 32
    loader = embedded(photos, model, "loader", digest)
    assert model.batches == 2
    device = embedded(photos, model, "device", digest)
    assert model.batches == 4                            # a miss: the loader path's entries were not used
    assert embedded(photos, model, "device", digest).tolist() == device.tolist() and model.batches == 4  # a hit
    directories = {decode: embedding_cache_dir(photos, digest, SQUASH, decode) for decode in ("loader", "device")}
    assert directories["loader"] != directories["device"]
    assert [directory.name.rsplit("-", 1)[1] for directory in directories.values()] == ["loader", "device"]
    for directory in directories.values():
        assert sorted(read_shards(directory)) == sorted(photos.sample_ids)
    np.testing.assert_array_equal(device, loader)      # the documented bound on the CPU: equal


def test_auto_on_the_cpu_is_the_loader_path_and_reads_its_entries(photos):
    model, digest = CountingModel(), "b2" * 32
    loader = embedded(photos, model, "loader", digest)
    assert embedded(photos, model, "auto", digest).tolist() == loader.tolist() and model.batches == 2


def test_a_cache_from_before_the_decode_mode_was_keyed_is_not_read(photos):
    """Such a cache may mix both modes' embeddings: it is left alone and the images are embedded again."""
    model, digest = CountingModel(), "c3" * 32
    unkeyed = embedding_cache_dir(photos, digest, SQUASH).with_name(
        embedding_cache_dir(photos, digest, SQUASH).name.rsplit("-", 1)[0])
    write_shard(unkeyed, photos.sample_ids, np.full((len(photos), 128), 7.0, dtype=np.float32))
    values = embedded(photos, model, "loader", digest)
    assert model.batches == 2 and not (values == 7.0).all()


def test_the_cache_key_takes_only_a_resolved_decode_mode(photos):
    with pytest.raises(ValueError, match="decode must be resolved to one of"):
        embedding_cache_dir(photos, "digest", SQUASH, "auto")


def test_on_the_cpu_the_device_paths_batches_are_the_loader_paths(photos):
    reference = torch.stack([SQUASH.transform()(photos.load_image(i)) for i in range(len(photos))])
    ours = torch.cat(list(DeviceBatches(photos, range(len(photos)), SQUASH, torch.device("cpu"), batch_size=4)))
    assert torch.equal(ours, reference)


def test_the_float_resize_of_cuda_strays_from_pil_by_one_level_in_at_most_a_quarter_of_the_pixels(photos):
    """What the docs state for :func:`preprocess` (run here on the CPU, as it runs on CUDA): where Pillow runs
    its passes in the other order (portraits squashed), about a fifth of the pixels differ, by 1 level."""
    decoded = [torch.from_numpy(np.array(photos.load_image(i))).permute(2, 0, 1) for i in range(len(photos))]
    reference = torch.stack([SQUASH.transform()(photos.load_image(i)) for i in range(len(photos))])
    difference = (preprocess(decoded, SQUASH) - reference).abs()
    assert difference.max() <= LEVEL + 1e-5
    per_image = (difference > 1e-5).float().mean(dim=(1, 2, 3))
    assert per_image.max() < 0.25
