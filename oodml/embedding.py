"""The embedding engine: run a model over every image of a dataset, in batches, on the best device.

Shared by feature extraction for splits and (later) by evaluation, so both
see images through the same code: a DataLoader with workers and pinned
memory, channels-last tensors, and autocast at the requested precision on GPU.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchvision import transforms as T

from ._fs import atomic_path, oodml_home, remove_stale_temporaries
from .datasets import ImageDataset
from .distributed import barrier, local_device_index, rank_world
from .errors import OodmlError
from .progress import progress

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into tensors: resize the short side, centre-crop, normalise.

    ``resize``/``crop`` in pixels (``None`` skips the step); ``mean``/``std`` per RGB channel.
    """

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # JSON gives lists; keep records comparable and hashable
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    def transform(self) -> Callable:
        steps = []
        if self.resize:
            steps.append(T.Resize(self.resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True))
        if self.crop:
            steps.append(T.CenterCrop(self.crop))
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def as_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std)}


IMAGENET = Preprocessing()


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


@torch.no_grad()
def embed(dataset: ImageDataset, model: torch.nn.Module, preprocessing: Preprocessing, *,
          indices: Sequence[int] | None = None, batch_size: int = 128, device: str = "auto",
          precision: str = "fp32", workers: int = 0, desc: str = "embed") -> np.ndarray:
    """Embed images with ``model`` in eval mode.

    Args:
        dataset: the images.
        model: maps a (B, 3, H, W) float batch to (B, d) embeddings.
        preprocessing: how to turn each image into a tensor.
        indices: which samples (default all), in this order.
        batch_size, workers: DataLoader settings.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast (GPU only; the CPU runs fp32).

    Returns:
        float32 array (len(indices), d).

    Raises:
        OodmlError: bad device/precision, an unreadable image, or a model output
            that is not (B, d) with finite values.
    """
    if precision not in PRECISIONS:
        raise OodmlError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    dev = resolve_device(device)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    loader = torch.utils.data.DataLoader(_Images(dataset, indices, preprocessing.transform()),
                                         batch_size=batch_size, num_workers=workers,
                                         pin_memory=dev.type == "cuda", persistent_workers=False)
    model = model.eval().to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    autocast = PRECISIONS[precision] if dev.type == "cuda" else None
    out = []
    for batch in progress(loader, desc, total=len(loader), unit="batch"):
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
            raise OodmlError(f"the model raised {type(exc).__name__} on a batch of shape {tuple(batch.shape)}: "
                             f"{_model_error(exc)}") from None
        if not isinstance(result, torch.Tensor) or result.ndim != 2 or result.shape[0] != batch.shape[0]:
            shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
            raise OodmlError(f"the model returned {shape} for a batch of {batch.shape[0]} images; expected "
                             "(batch, dimensions)")
        result = result.float().cpu()
        if out and result.shape[1] != out[0].shape[1]:
            raise OodmlError(f"the model returned {result.shape[1]}-d embeddings after {out[0].shape[1]}-d ones; "
                             "its output width must be constant")
        if not torch.isfinite(result).all():
            rows = int((~torch.isfinite(result)).any(1).sum())
            raise OodmlError(f"the model returned NaN or inf embeddings for {rows} of {result.shape[0]} images in a "
                             "batch; check its weights and input preprocessing")
        out.append(result.numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _model_error(exc: BaseException) -> str:
    """The informative line of a model's exception (for TorchScript, the last line: the original error)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    return lines[-1] if "TorchScript" in lines[0] else lines[0]


# --- cached embeddings, written in shards so that an interrupted run resumes ---------------------

def _prep_hash(preprocessing: Preprocessing) -> str:
    return hashlib.sha256(json.dumps(preprocessing.as_dict(), sort_keys=True).encode()).hexdigest()[:8]


def embedding_cache_dir(dataset: ImageDataset, model_digest: str, preprocessing: Preprocessing) -> Path:
    """``$OODML_HOME/embeddings/<dataset>/<fingerprint>-<model digest>-<preprocessing hash>/``."""
    return (oodml_home() / "embeddings" / dataset.name /
            f"{dataset.fingerprint[:16]}-{model_digest[:16]}-{_prep_hash(preprocessing)}")


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
    ranks share), so the result equals a single process's.  ``embed_options`` go to :func:`embed`.
    """
    indices = list(indices)
    rank, world = rank_world()
    if not use_cache and world == 1:
        return embed(dataset, model, preprocessing, indices=indices, **embed_options)
    directory = embedding_cache_dir(dataset, model_digest, preprocessing)
    if rank == 0:
        remove_stale_temporaries(directory)
    cached = read_shards(directory)
    barrier()  # everyone has seen the same cache before anyone adds to it
    missing = [i for i in dict.fromkeys(indices) if dataset.sample_ids[i] not in cached]
    blocks = [missing[start:start + shard_size] for start in range(0, len(missing), shard_size)]
    for block in blocks[rank::world]:
        values = embed(dataset, model, preprocessing, indices=block, **embed_options)
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
