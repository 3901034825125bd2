"""Decoding on the device (oodml.decode) gives the loader path's images, errors and embeddings.

Two sources of difference, tested apart.  Decoding: on the CPU decode_jpeg and PIL share
libjpeg-turbo and give equal pixels; on CUDA nvJPEG upsamples 4:2:0 chroma differently (a mean
of 3-4 levels on these images), and is otherwise exact.  Resizing, cropping and normalising:
the float resize (oodml.decode.preprocess, the CUDA path's), from the same decoded pixels, at most
2 levels after normalisation (ImageNet std, so one 8-bit level is at most 1 / (255 x 0.224) = 0.0175;
1 except where bicubic upscaling amplifies a first pass's 1) in under 5% of the pixels, on either
device.  On the CPU the device path resizes with PIL itself, so its embeddings equal the loader
path's.  The CUDA cases run where a GPU is present (tools/gpu_decode_check.sh).
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from oodml import OodmlError
from oodml.datasets import load_dataset
from oodml.decode import DeviceBatches, choose_decode, decode_jpegs, decoding_difference, device_decodable, preprocess
from oodml.embedding import EmbedSettings, embed
from oodml.preprocessing import Preprocessing


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Elementwise ops on small images: one thread is faster than several fighting over a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LEVEL = 1 / (255 * 0.224)  # one 8-bit level after normalisation, at the smallest std (green)
SHAPES = [(375, 500), (500, 333), (97, 131), (300, 300)]  # CUB-like landscape and portrait, small, square


def natural_image(height: int, width: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A smooth random colour field with noise and a sharp red band: edges and gradients, as in photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = smooth + rng.integers(-12, 13, size=smooth.shape)
    pixels[height // 3: height // 2, :, 0] = 250
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An imagefolder of JPEGs of four shapes, a grey JPEG, a CMYK JPEG and a PNG, in two classes."""
    root = tmp_path_factory.mktemp("photos")
    for c in range(2):
        (root / f"c{c}").mkdir()
        for k, (h, w) in enumerate(SHAPES):
            (root / f"c{c}/{k}.jpg").write_bytes(jpeg_bytes(natural_image(h, w, seed=10 * c + k)))
        (root / f"c{c}/grey.jpg").write_bytes(jpeg_bytes(natural_image(200, 150, seed=c, mode="L")))
        (root / f"c{c}/cmyk.jpg").write_bytes(jpeg_bytes(natural_image(120, 160, seed=c, mode="CMYK")))
        natural_image(64, 300, seed=c).save(root / f"c{c}/wide.png")
    return root


def decoded_as_on(ds, device: str) -> list[Image.Image]:
    """Each image of ``ds`` with the pixels the device path decodes on ``device`` (PIL where it refuses)."""
    images = []
    for i in range(len(ds)):
        data = ds.load_encoded(i)
        decoded = None
        if data is not None and device_decodable(data):
            decoded = decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.device(device))[0]
        images.append(ds.load_image(i) if decoded is None else
                      Image.fromarray(decoded.permute(1, 2, 0).cpu().numpy()))
    return images


def loader_images(images: list[Image.Image], preprocessing: Preprocessing) -> torch.Tensor:
    return torch.stack([preprocessing.transform()(image) for image in images])


def float_resized(images: list[Image.Image], preprocessing: Preprocessing, device: str) -> torch.Tensor:
    """:func:`preprocess` (how the device path resizes on CUDA) of ``images``, run on ``device``."""
    pixels = [torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).to(device) for image in images]
    return preprocess(pixels, preprocessing).cpu()


def assert_close_to_loader(ours: torch.Tensor, reference: torch.Tensor) -> None:
    difference = (ours - reference).abs()
    assert difference.max() <= 2 * LEVEL + 1e-5
    assert (difference > 1e-5).float().mean() < 0.05


@pytest.mark.parametrize("device", DEVICES)
def test_the_device_decoder_gives_pils_pixels_except_nvjpegs_chroma_upsampling(device):
    """On the CPU the same libjpeg-turbo: equal pixels.  nvJPEG (an H200, 2026-11-27) gave PIL's pixels
    exactly for full-resolution chroma (4:4:4) and grey, and means of 3.1-4.0 levels (maxima up to 50)
    for 4:2:0, PIL's default and most photos': it upsamples chroma differently from libjpeg's "fancy"
    upsampling.  The bounds below leave room for other GPUs' decoders."""
    for seed, (height, width) in enumerate(SHAPES):
        image = natural_image(height, width, seed)
        full, subsampled = io.BytesIO(), io.BytesIO()
        image.save(full, format="JPEG", quality=90, subsampling=0)
        image.save(subsampled, format="JPEG", quality=90, subsampling=2)
        gap = {layout: decoding_difference(data, device).mean() for layout, data in
               (("4:4:4", full.getvalue()), ("4:2:0", subsampled.getvalue()), ("grey", jpeg_bytes(image.convert("L"))))}
        if device == "cpu":
            assert gap == {"4:4:4": 0, "4:2:0": 0, "grey": 0}
        else:
            assert gap["4:4:4"] < 0.5 and gap["grey"] < 0.5 and gap["4:2:0"] < 5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preprocessing", [
    Preprocessing(),
    Preprocessing(resize_mode="squash"),
    Preprocessing(interpolation="bicubic", resize=240, crop=200),
    Preprocessing(interpolation="nearest"),
    Preprocessing(resize=96, crop=None, resize_mode="squash"),
], ids=["shorter-side", "squash", "bicubic", "nearest", "squash-no-crop"])
def test_device_path_gives_the_loader_paths_images(folder, preprocessing, device):
    """From the same decoded pixels, the float resize, crop and normalisation on ``device`` is PIL's to 2 levels."""
    ds = load_dataset("imagefolder", root=folder)
    decoded = decoded_as_on(ds, device)
    reference = loader_images(decoded, preprocessing)
    ours = float_resized(decoded, preprocessing, device)
    assert ours.shape == reference.shape and ours.dtype == torch.float32
    assert_close_to_loader(ours, reference)


def test_nearest_resizing_is_exact_on_the_cpu(folder):
    ds = load_dataset("imagefolder", root=folder)
    nearest = Preprocessing(interpolation="nearest", resize=77, crop=64)
    pil = [ds.load_image(i) for i in range(len(ds))]
    assert torch.equal(float_resized(pil, nearest, "cpu"), loader_images(pil, nearest))


def test_only_complete_rgb_or_grey_jpegs_go_to_the_device(folder):
    jpeg = (folder / "c0/0.jpg").read_bytes()
    assert device_decodable(jpeg)
    assert device_decodable((folder / "c0/grey.jpg").read_bytes())
    assert not device_decodable((folder / "c0/cmyk.jpg").read_bytes())
    assert not device_decodable((folder / "c0/wide.png").read_bytes())
    assert not device_decodable(jpeg[:-100])  # truncated: PIL refuses it, so PIL must see it


def test_glyphs_have_no_files_and_are_resized_on_the_device():
    glyphs = load_dataset("glyphs")
    assert glyphs.load_encoded(0) is None
    subset = [0, 1, 500, 10_000]
    preprocessing = Preprocessing(resize=64, crop=56)
    reference = torch.stack([preprocessing.transform()(glyphs.load_image(i)) for i in subset])
    ours = torch.cat(list(DeviceBatches(glyphs, subset, preprocessing, torch.device("cpu"), batch_size=3)))
    assert_close_to_loader(ours, reference)


def test_auto_decodes_on_cuda_only_for_jpeg_files(folder):
    ds = load_dataset("imagefolder", root=folder)
    everything = list(range(len(ds)))
    assert choose_decode("auto", torch.device("cuda"), ds, everything) == "device"
    assert choose_decode("auto", torch.device("cpu"), ds, everything) == "loader"
    assert choose_decode("auto", torch.device("cuda"), load_dataset("glyphs"), everything) == "loader"
    assert choose_decode("device", torch.device("cpu"), ds, everything) == "device"
    with pytest.raises(OodmlError, match="unknown decode 'gpu'; use auto, loader, device"):
        choose_decode("gpu", torch.device("cpu"), ds, everything)


def error_of(ds, decode: str) -> str:
    with pytest.raises(OodmlError) as caught:
        embed(ds, torch.nn.Flatten(), Preprocessing(resize=32, crop=32), settings=EmbedSettings("cpu", decode=decode))
    return str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "bad huffman table"])
def test_a_corrupt_jpeg_gives_the_loader_paths_one_line_error(tmp_path, damage):
    data = jpeg_bytes(natural_image(60, 80, seed=3))
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # the header still parses (so the device is asked first), the decoder then refuses the table
        table = data.index(b"\xff\xc4") + 5
        data = data[:table] + b"\xff" * 16 + data[table + 16:]
        assert device_decodable(data)
    (tmp_path / "c").mkdir()
    (tmp_path / "c/ok.jpg").write_bytes(jpeg_bytes(natural_image(60, 80, seed=4)))
    (tmp_path / "c/bad.jpg").write_bytes(data)
    ds = load_dataset("imagefolder", root=tmp_path)
    message = error_of(ds, "loader")
    assert "cannot read image" in message and "bad.jpg" in message and "\n" not in message
    assert error_of(ds, "device") == message


def test_the_decompression_bomb_limit_holds_on_the_device_path(tmp_path, monkeypatch):
    (tmp_path / "c").mkdir()
    (tmp_path / "c/big.jpg").write_bytes(jpeg_bytes(natural_image(300, 400, seed=5)))
    ds = load_dataset("imagefolder", root=tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 400 // 3)  # PIL refuses from twice the limit
    assert not device_decodable((tmp_path / "c/big.jpg").read_bytes())
    message = error_of(ds, "loader")
    assert "more pixels than the 40,000 decoded safely" in message
    assert error_of(ds, "device") == message
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 400 - 1)  # just over: PIL only warns, oodml refuses
    assert not device_decodable((tmp_path / "c/big.jpg").read_bytes())
    assert error_of(ds, "device") == error_of(ds, "loader")


@pytest.mark.parametrize("device", DEVICES)
def test_embeddings_agree_between_decode_modes(folder, device):
    """A random resnet18: the decode mode moves each embedding less than half the way to its nearest other image,
    so every image's nearest neighbour across the two modes is itself."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=64)
    ds = load_dataset("imagefolder", root=folder)
    loader = embed(ds, model, Preprocessing(), settings=EmbedSettings(device, batch_size=8, decode="loader"))
    ours = embed(ds, model, Preprocessing(), settings=EmbedSettings(device, batch_size=8, decode="device"))
    error = np.linalg.norm(ours - loader, axis=1) / np.linalg.norm(loader, axis=1)
    distances = np.linalg.norm(loader[:, None] - loader[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest_other = distances.min(axis=1) / np.linalg.norm(loader, axis=1)
    if device == "cpu":  # the same decoder and PIL's resizing: equal
        np.testing.assert_array_equal(ours, loader)
    assert error.max() < 3e-2
    assert (error < 0.5 * nearest_other).all()


def test_a_jpeg_whose_frame_headers_disagree_never_reaches_the_device(tmp_path):
    """PIL checks the last frame header's size; a decoder reading the first would skip the pixel limit."""
    data = jpeg_bytes(natural_image(48, 64, seed=6))
    frame = data.index(b"\xff\xc0")
    header = bytearray(data[frame: frame + 2 + int.from_bytes(data[frame + 2: frame + 4], "big")])
    header[5:9] = (40_000).to_bytes(2, "big") * 2  # a 40,000 x 40,000 frame first
    forged = data[:frame] + bytes(header) + data[frame:]
    with Image.open(io.BytesIO(forged)) as image:
        assert image.size == (64, 48)  # what the pixel limit sees
    assert not device_decodable(forged)
    (tmp_path / "c").mkdir()
    (tmp_path / "c/forged.jpg").write_bytes(forged)
    ds = load_dataset("imagefolder", root=tmp_path)
    assert error_of(ds, "device") == error_of(ds, "loader")
