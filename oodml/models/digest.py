"""The content digest of a model: a sha256 over everything that determines its embeddings.

The digest keys cached embeddings and names the model in results and
leaderboard entries, so two models share it only if they compute the same
function on the same inputs.  It covers:

* **code.**  TorchScript: the forward graph with every submodule method and
  helper function inlined (printed without source locations), and its tensor
  constants.  ``torch.fx`` graph modules (what a ``torch.export`` program
  runs): the generated code of each graph.  Ordinary modules (the registered
  architectures and checkpoints of them): each submodule's class, and the
  source text of classes defined outside torch, so a changed ``forward``
  changes the digest.
* **attributes** of every submodule, which TorchScript and ordinary code read
  at run time without them being code or weights: ``self.side = 16``, a
  convolution's stride, a model's ``arch`` and ``config``.
* **tensors**: every parameter and buffer (persistent or not) and any other
  tensor attribute (``torch.export`` keeps constants so), by name, as dtype,
  shape and raw bytes.
* **preprocessing**, which decides what the model sees.

The encoding is canonical: submodules and tensors in name order, every field
length-prefixed, tensors as their bytes and other values as JSON with sorted
keys (floats in Python's shortest round-trip form), so equal models get equal
digests on every machine and distinct fields can never run together.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch

from .._fs import file_digest
from ..preprocessing import Preprocessing

DIGEST_FORMAT = b"oodml-model-digest/2"
_MAX_DEPTH = 6  # attribute values nest (dicts of lists of ...); deeper parts are hashed by type name only


def model_digest(module: torch.nn.Module, preprocessing: Preprocessing, identity: dict | None = None) -> str:
    """sha256 (64 hex characters) of ``module``'s code, attributes, tensors and ``preprocessing``; see the module
    docstring.  Equal for a module and its reloaded copy; different when any of these differ.

    ``identity`` (JSON-able) is what a model spec says about where the model came from (source, name,
    revision, library, weights sha256, pretraining); when given it is part of the digest.
    """
    h = hashlib.sha256()
    _field(h, DIGEST_FORMAT)
    if identity is not None:
        _field(h, b"identity")
        _field(h, canonical_json(identity).encode())
    if isinstance(module, torch.jit.ScriptModule):
        graph = module.inlined_graph
        _field(h, graph.str(False).encode())
        _tensor_fields(h, {f"constant{i}": t for i, t in enumerate(_graph_tensor_constants(graph))})
    for name, submodule in sorted(module.named_modules(remove_duplicate=False), key=lambda item: item[0]):
        scalars, tensors = module_state(submodule)
        _field(h, name.encode())
        _field(h, canonical_json(scalars).encode())
        _tensor_fields(h, tensors)
    _field(h, canonical_json(preprocessing.as_dict()).encode())
    return h.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (parameters and persistent buffers): the weights actually loaded,
    whatever file format they came in.  Tensors in name order, each as name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    _tensor_fields(h, dict(module.state_dict()))
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised per (path, mtime, size) within the process (weights are hashed once)."""
    path = Path(path).resolve()
    st = path.stat()
    return _memo_file_sha256(path, st.st_mtime_ns, st.st_size)


@cache
def _memo_file_sha256(path: Path, mtime_ns: int, size: int) -> str:
    return file_digest(path)


def module_state(module: torch.nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """What one module (not its children) contributes: ``(description, tensors)``.

    ``description`` is JSON-able: the class (and its source, or the graph code),
    and the attributes that are not tensors, flattened to dotted names.
    ``tensors`` maps names to the module's own parameters, buffers and other tensor attributes.
    """
    scalars: dict = {}
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(module, torch.jit.ScriptModule):
        scalars["class"] = module.original_name
        attributes = dict(torch._C._jit_debug_module_iterators(module._c)["named_attributes"])
    else:
        cls = type(module)
        scalars["class"] = f"{cls.__module__}.{cls.__qualname__}"
        if isinstance(module, torch.fx.GraphModule):
            scalars["code"] = module.code
        elif not cls.__module__.startswith("torch"):
            scalars["source"] = _class_source(cls)
        attributes = {**vars(module), **module._parameters, **module._buffers}
        attributes = {k: v for k, v in attributes.items() if not k.startswith("_") or k in module._parameters
                      or k in module._buffers}
    for key, value in sorted(attributes.items()):
        if key != "training" and not isinstance(value, torch.nn.Module | torch.jit.ScriptModule):
            _flatten(key, value, scalars, tensors, 0)
    return scalars, tensors


def canonical_json(value: object) -> str:
    """JSON with sorted keys and no spaces; floats in their shortest round-trip form, NaN and inf as names."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _flatten(name: str, value: object, scalars: dict, tensors: dict[str, torch.Tensor], depth: int) -> None:
    """Split an attribute value into JSON scalars and tensors under dotted names."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value
    elif value is None or isinstance(value, bool | int | float | str):
        scalars[name] = value
    elif depth >= _MAX_DEPTH:
        scalars[name] = f"<{type(value).__qualname__}>"
    elif isinstance(value, list | tuple):
        scalars[name] = f"<{type(value).__qualname__} of {len(value)}>"
        for i, item in enumerate(value):
            _flatten(f"{name}[{i}]", item, scalars, tensors, depth + 1)
    elif isinstance(value, dict):
        scalars[name] = f"<dict of {len(value)}>"
        for key in sorted(value, key=repr):
            _flatten(f"{name}[{key!r}]", value[key], scalars, tensors, depth + 1)
    elif isinstance(value, torch.ScriptObject):  # e.g. quantized packed weights: their state holds the tensors
        try:
            state = value.__getstate__()
        except RuntimeError:
            state = None
        scalars[name] = f"<{value._type().qualified_name()}>"
        _flatten(f"{name}.state", state, scalars, tensors, depth + 1)
    else:  # a method, a dataclass, an enum: only its type, never a repr that may hold an address
        scalars[name] = f"<{type(value).__qualname__}>"


def _class_source(cls: type) -> str:
    """sha256 of a class's source text, or ``unavailable`` (a class made in a REPL or from a .pyc only)."""
    try:
        return hashlib.sha256(inspect.getsource(cls).encode()).hexdigest()
    except (OSError, TypeError):
        return "unavailable"


def _graph_tensor_constants(graph: torch.Graph) -> Iterator[torch.Tensor]:
    """Tensor constants of a TorchScript graph, nested blocks included, in node order."""
    for node in graph.nodes():
        yield from _node_tensor_constants(node)


def _node_tensor_constants(node: torch.Node) -> Iterator[torch.Tensor]:
    if node.kind() == "prim::Constant" and node.hasAttribute("value") and node.kindOf("value") == "t":
        yield node.t("value")
    for block in node.blocks():
        for inner in block.nodes():
            yield from _node_tensor_constants(inner)


def _field(h: hashlib._Hash, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _tensor_fields(h: hashlib._Hash, tensors: dict[str, torch.Tensor]) -> None:
    """Count, then per tensor in name order: name, dtype, shape, raw bytes (little-endian, C order)."""
    _field(h, str(len(tensors)).encode())
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach()
        if t.is_quantized:
            t = t.dequantize()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.cpu().contiguous()
        _field(h, name.encode())
        _field(h, f"{t.dtype}|{list(t.shape)}".encode())
        _field(h, t.reshape(-1).view(torch.uint8).numpy().tobytes())
