"""The embedding engine: run a model over every image of a dataset, in batches, on the best device.

Shared by feature extraction for splits and by evaluation, so both
see images through the same code: a DataLoader with workers and pinned
memory, channels-last tensors, and autocast at the requested precision on GPU.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ._fs import atomic_path, oodml_home, remove_stale_temporaries
from .datasets import ImageDataset
from .decode import DeviceBatches, choose_decode
from .distributed import barrier, local_device_index, rank_world
from .errors import OodmlError
from .preprocessing import Preprocessing
from .progress import Stage, stage

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; explicit names are checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            local = local_device_index()  # under torchrun, each process takes its own GPU
            return torch.device("cuda", local) if local is not None else torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OodmlError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OodmlError(f"device {name!r} requested but CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OodmlError(f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OodmlError("device 'mps' requested but Apple MPS is not available; use --device cpu")
    return device


class _Images(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageDataset, indices: Sequence[int], transform: Callable):
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.dataset.load_image(self.indices[i]))


@dataclass(frozen=True)
class EmbedSettings:
    """Where and how images are embedded; none of it changes what an embedding means.

    Attributes:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast (GPU only; the CPU runs fp32).
        batch_size: images per batch; workers: image loader processes (0: the main process).
        decode: where images are decoded and resized: ``loader`` (PIL on the workers), ``device``
            (JPEGs decoded and all images resized on ``device``, :mod:`oodml.decode`), or ``auto``
            (``device`` on CUDA for datasets of JPEG files).  The embeddings agree within the
            tolerances stated there.
    """

    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 128
    workers: int = 0
    decode: str = "loader"


def _batches(dataset: ImageDataset, indices: list[int], preprocessing: Preprocessing, dev: torch.device,
             settings: EmbedSettings) -> DeviceBatches | torch.utils.data.DataLoader:
    """The images as float (B, 3, H, W) batches: decoded by PIL on the workers, or on ``dev`` (``decode``)."""
    batch_size, workers = settings.batch_size, settings.workers
    if choose_decode(settings.decode, dev, dataset, indices) == "device":
        return DeviceBatches(dataset, indices, preprocessing, dev, batch_size=batch_size, workers=workers)
    return torch.utils.data.DataLoader(_Images(dataset, indices, preprocessing.transform()), batch_size=batch_size,
                                       num_workers=workers, pin_memory=dev.type == "cuda", persistent_workers=False)


@torch.no_grad()
def embed(dataset: ImageDataset, model: torch.nn.Module, preprocessing: Preprocessing, *,
          indices: Sequence[int] | None = None, settings: EmbedSettings = EmbedSettings(), desc: str = "embed",
          model_name: str = "the model", within: Stage | None = None) -> np.ndarray:
    """Embed images with ``model`` in eval mode.

    Args:
        dataset: the images.
        model: maps a (B, 3, H, W) float batch to (B, d) embeddings, d >= 1.
        preprocessing: how to turn each image into a tensor.
        indices: which samples (default all), in this order.
        settings: the device, precision, batch size, loader workers and decode mode.
        desc: the progress stage's label (:mod:`oodml.progress`); it counts images.
        model_name: how errors name the model (e.g. the file it was loaded from).
        within: a stage to count the images on instead of one of its own (one bar across cache shards).

    Returns:
        float32 array (len(indices), d).

    Raises:
        OodmlError: bad device/precision/decode, an unreadable image, or a model output
            that is not (B, d) real values, d >= 1 and the same in every batch, all finite.
    """
    if settings.precision not in PRECISIONS:
        raise OodmlError(f"unknown precision {settings.precision!r}; use {', '.join(PRECISIONS)}")
    dev = resolve_device(settings.device)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    loader = _batches(dataset, indices, preprocessing, dev, settings)
    model = model.eval().to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    autocast = PRECISIONS[settings.precision] if dev.type == "cuda" else None
    out = []
    with stage(desc, total=len(indices), unit="img", within=within) as counted:
        for batch in loader:
            out.append(_embed_batch(model, batch, dev, autocast, model_name, out[0].shape[1] if out else None))
            counted.update(len(batch))
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _embed_batch(model: torch.nn.Module, batch: torch.Tensor, dev: torch.device, autocast: torch.dtype | None,
                 model_name: str, width: int | None) -> np.ndarray:
    """One batch's float32 (B, d) embeddings; ``width``: the earlier batches' d (None for the first).

    Raises:
        OodmlError: out of GPU memory, the model raised, or its output is not valid
            (:func:`embedding_batch_problem`).
    """
    batch = batch.to(dev, non_blocking=True)
    if dev.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last)
    try:
        with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
            result = model(batch)
    except torch.cuda.OutOfMemoryError:
        raise OodmlError(f"out of GPU memory embedding a batch of {batch.shape[0]} images; lower "
                         "--batch-size") from None
    except Exception as exc:  # a foreign model can fail in any way: one line, no traceback
        raise OodmlError(f"{model_name} raised {type(exc).__name__} on a batch of shape "
                         f"{tuple(batch.shape)}: {_model_error(exc)}") from None
    problem = embedding_batch_problem(result, batch.shape[0], width)
    if problem:
        raise OodmlError(f"{model_name} {problem}")
    return result.float().cpu().numpy()


def embedding_batch_problem(result: object, images: int, width: int | None) -> str | None:
    """What is wrong with a model's output for a batch of ``images`` images, else None.

    A valid output is a real tensor (images, d), d >= 1 (and d == ``width``, the
    width of the earlier batches, when given), with every value finite.  The
    answer completes a sentence whose subject is the model.
    """
    if not isinstance(result, torch.Tensor) or result.ndim != 2 or result.shape[0] != images:
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        return f"returned {shape} for a batch of {images} images; expected (batch, dimensions)"
    if result.shape[1] == 0:
        return (f"returned zero-width embeddings {tuple(result.shape)} for a batch of {images} images; it must "
                "return at least one dimension per image")
    if width is not None and result.shape[1] != width:
        return f"returned {result.shape[1]}-d embeddings after {width}-d ones; its output width must be constant"
    if result.is_complex():
        return f"returned complex embeddings ({result.dtype}); expected real numbers (e.g. float32)"
    finite = torch.isfinite(result)
    if not finite.all():
        rows = int((~finite).any(1).sum())
        return (f"returned NaN or inf embeddings for {rows} of {images} images in a batch; check its weights and "
                "input preprocessing")
    return None


def _model_error(exc: BaseException) -> str:
    """The informative line of a model's exception (for TorchScript, the last line: the original error)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    return lines[-1] if "TorchScript" in lines[0] else lines[0]


# --- cached embeddings, written in shards so that an interrupted run resumes ---------------------

def _prep_hash(preprocessing: Preprocessing) -> str:
    return hashlib.sha256(json.dumps(preprocessing.as_dict(), sort_keys=True).encode()).hexdigest()[:8]


#: resolved decode modes (never ``auto``), each with its own cache entries
CACHED_DECODES = ("loader", "device")


def embedding_cache_dir(dataset: ImageDataset, model_digest: str, preprocessing: Preprocessing,
                        decode: str = "loader") -> Path:
    """``$OODML_HOME/embeddings/<dataset>/<fingerprint>-<model digest>-<preprocessing hash>-<decode>/``.

    ``decode`` is where the images were decoded and resized, ``loader`` or ``device`` (as resolved by
    :func:`oodml.decode.choose_decode`): on CUDA the two paths' embeddings differ by about 5e-3 relative
    (:mod:`oodml.decode`), so they never share entries.  (Caches written before the mode was part of the
    key, named without the suffix, are not read: they may mix the two.)

    Raises:
        ValueError: ``decode`` is not one of :data:`CACHED_DECODES` (a programming error).
    """
    if decode not in CACHED_DECODES:
        raise ValueError(f"decode must be resolved to one of {CACHED_DECODES} before keying the cache, got {decode!r}")
    return (oodml_home() / "embeddings" / dataset.name /
            f"{dataset.fingerprint[:16]}-{model_digest[:16]}-{_prep_hash(preprocessing)}-{decode}")


def write_embedding_table(path: Path, sample_ids: Sequence[str], values: np.ndarray,
                          dtype: type = np.float32) -> Path:
    """Write embeddings as Parquet (``sample_id`` string, ``embedding`` fixed-size list of ``dtype``), atomically.

    The one on-disk format for embeddings: cache shards (float32), saved
    evaluation embeddings and leaderboard submissions (float16).
    """
    values = np.asarray(values)
    arrow_type = pa.float16() if np.dtype(dtype) == np.float16 else pa.float32()
    flat = pa.array(values.astype(dtype).ravel(), arrow_type)
    column = pa.FixedSizeListArray.from_arrays(flat, values.shape[1] if values.ndim == 2 else 0)
    with atomic_path(Path(path)) as tmp:
        pq.write_table(pa.table({"sample_id": pa.array(list(sample_ids), pa.string()), "embedding": column}), tmp)
    return Path(path)


def read_embedding_table(path: Path) -> tuple[list[str], np.ndarray]:
    """``(sample ids, float32 (N, d) array)`` from :func:`write_embedding_table`'s format.

    Raises:
        OodmlError: not Parquet, missing or mistyped columns, null entries (the file may be untrusted).
    """
    try:
        table = pq.read_table(path)
        ids_column, values_column = table.column("sample_id"), table.column("embedding").combine_chunks()
    except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
        raise OodmlError(f"{path}: not an embedding table (Parquet with sample_id and embedding: {exc})") from None
    if not pa.types.is_string(ids_column.type) or not pa.types.is_fixed_size_list(values_column.type) or \
            not pa.types.is_floating(values_column.type.value_type):
        raise OodmlError(f"{path}: sample_id must be strings and embedding a fixed-size list of floats, got "
                         f"{ids_column.type} and {values_column.type}")
    if ids_column.null_count or values_column.null_count or values_column.flatten().null_count:
        raise OodmlError(f"{path}: null sample ids or embedding values")
    ids = ids_column.to_pylist()
    values = np.asarray(values_column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return ids, values.reshape(len(ids), values_column.type.list_size)


def read_shards(directory: Path) -> dict[str, np.ndarray]:
    """Every cached embedding under ``directory``, by sample id; unreadable shards are skipped."""
    found: dict[str, np.ndarray] = {}
    for shard in sorted(directory.glob("shard-*.parquet")) if directory.is_dir() else []:
        try:
            ids, values = read_embedding_table(shard)
        except OodmlError:
            continue  # written atomically, so only foreign damage gets here; it is recomputed
        found.update(zip(ids, values, strict=True))
    return found


def write_shard(directory: Path, sample_ids: Sequence[str], values: np.ndarray) -> Path:
    """One shard, written to a unique temporary name and renamed, so concurrent writers never collide."""
    return write_embedding_table(directory / f"shard-{uuid.uuid4().hex}.parquet", sample_ids, values)


def embed_cached(dataset: ImageDataset, model: torch.nn.Module, preprocessing: Preprocessing, model_digest: str,
                 indices: Sequence[int], *, shard_size: int = 2048, use_cache: bool = True,
                 **embed_options) -> np.ndarray:
    """Embeddings of ``dataset[indices]`` (len(indices), d), each image embedded at most once per model.

    Cached under :func:`embedding_cache_dir`; missing images are embedded in
    shards of ``shard_size`` and each shard is written as soon as it is done,
    so a killed run loses at most one shard of work.  Under torch.distributed,
    shard ``b`` of the missing images is embedded by rank ``b mod world`` and
    every rank then reads the complete cache (which must be on a filesystem all
    ranks share), so the result equals a single process's.  ``embed_options`` (``settings``, ``desc``,
    ``model_name``) go to :func:`embed`.  The decode mode (``settings.decode``, resolved once for all of
    ``indices``) is part of the key; the device and precision are not.
    """
    indices = list(indices)
    rank, world = rank_world()
    settings = embed_options.get("settings", EmbedSettings())
    decode = choose_decode(settings.decode, resolve_device(settings.device), dataset, indices)
    embed_options = {**embed_options, "settings": replace(settings, decode=decode)}
    if not use_cache and world == 1:
        return embed(dataset, model, preprocessing, indices=indices, **embed_options)
    directory = embedding_cache_dir(dataset, model_digest, preprocessing, decode)
    if rank == 0:
        remove_stale_temporaries(directory)
    cached = read_shards(directory)
    barrier()  # everyone has seen the same cache before anyone adds to it
    wanted = list(dict.fromkeys(indices))
    missing = [i for i in wanted if dataset.sample_ids[i] not in cached]
    blocks = [missing[start:start + shard_size] for start in range(0, len(missing), shard_size)][rank::world]
    # one stage across the shards (each is a resume unit, not a stage of its own), saying what was kept
    with stage(embed_options.pop("desc", "embed"), total=sum(map(len, blocks)), unit="img") as counted:
        counted.set_postfix_str(f"{len(wanted) - len(missing)} of {len(wanted)} read from the cache", refresh=False)
        for block in blocks:
            values = embed(dataset, model, preprocessing, indices=block, within=counted, **embed_options)
            ids = [dataset.sample_ids[i] for i in block]
            write_shard(directory, ids, values)
            cached.update(zip(ids, values, strict=True))
    if world > 1:
        barrier()
        cached = read_shards(directory)
    if not indices:
        return np.zeros((0, 0), dtype=np.float32)
    widths = {cached[dataset.sample_ids[i]].shape[0] for i in indices}
    if len(widths) != 1:
        raise OodmlError(f"the model's embeddings have inconsistent widths {sorted(widths)} across batches; "
                         f"clear {directory} if the cache is stale")
    return np.stack([cached[dataset.sample_ids[i]] for i in indices])
