"""The model edge: what a model's digest covers, and malformed model files, configs, preprocessing and
outputs turned into one-line errors (with a fuzzed budget of hostile checkpoints)."""

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oodml import OodmlError
from oodml.embedding import EmbedSettings, embed, embed_cached, embedding_cache_dir
from oodml.errors import brief
from oodml.features import cache_dir, torchscript_extractor
from oodml.models import create_model, load_model, model_digest, save
from oodml.preprocessing import Preprocessing

TINY = Preprocessing(resize=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
CPU = EmbedSettings("cpu")
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


class PooledLinear(torch.nn.Module):
    """(B, 3, H, W) -> (B, 8): a Linear on each pixel's RGB, pooled over the pixels."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear


class MeanPooled(PooledLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(2).transpose(1, 2)).mean(1)


class MaxPooled(PooledLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(2).transpose(1, 2)).amax(1)


def save_torchscript(module: torch.nn.Module, path, preprocessing: Preprocessing | str | bytes = TINY):
    """Script ``module`` and save it with ``preprocessing`` (a record, or the raw preprocessing.json)."""
    text = json.dumps(preprocessing.as_dict()) if isinstance(preprocessing, Preprocessing) else preprocessing
    torch.jit.script(module).save(str(path), _extra_files={"preprocessing.json": text})
    return path


def same_weights_two_poolings(tmp_path):
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 8)
    return (save_torchscript(MeanPooled(linear), tmp_path / "mean.pt"),
            save_torchscript(MaxPooled(linear), tmp_path / "max.pt"))


# --- the digest covers code, attributes, tensors and preprocessing --------------------------------

def test_same_weights_different_pooling_get_different_digests(tmp_path):
    mean_path, max_path = same_weights_two_poolings(tmp_path)
    mean, max_ = load_model(mean_path), load_model(max_path)
    assert torch.equal(mean.module.linear.weight, max_.module.linear.weight)
    assert mean.digest != max_.digest
    assert load_model(mean_path).digest == mean.digest          # and stable across loads


def test_each_model_gets_its_own_cached_embeddings(glyphs, tmp_path):
    """The regression: `oodml evaluate` scored the max-pooled model on the mean-pooled one's cached embeddings
    (Recall@1 0.1051 for both).  Evaluation embeds through embed_cached keyed by the loaded model's digest."""
    mean, max_ = (load_model(path) for path in same_weights_two_poolings(tmp_path))
    indices = range(0, len(glyphs), 100)

    def cached(loaded):
        return embed_cached(glyphs, loaded.module, loaded.preprocessing, loaded.digest, indices, settings=CPU)

    mean_embeddings = cached(mean)                                 # fills the cache
    max_embeddings = cached(max_)
    fresh = embed(glyphs, max_.module, max_.preprocessing, indices=indices, settings=CPU)
    np.testing.assert_array_equal(max_embeddings, fresh)
    assert not np.allclose(max_embeddings, mean_embeddings)


def test_parameter_free_models_with_different_code_get_different_keys(glyphs, tmp_path):
    class MeanColour(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3))

    class MaxColour(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.amax((2, 3))

    a = load_model(save_torchscript(MeanColour(), tmp_path / "a.pt"))
    b = load_model(save_torchscript(MaxColour(), tmp_path / "b.pt"))
    assert a.digest != b.digest
    assert embedding_cache_dir(glyphs, a.digest, a.preprocessing) != \
        embedding_cache_dir(glyphs, b.digest, b.preprocessing)


class Scaled(torch.nn.Module):
    """Reads a plain int attribute and a non-persistent buffer: neither is code nor in the state dict."""

    def __init__(self, factor: int, offset: float):
        super().__init__()
        self.factor = factor
        self.register_buffer("offset", torch.full((3,), offset), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) * self.factor + self.offset


def test_the_digest_covers_attributes_unsaved_buffers_and_preprocessing(tmp_path):
    def digest(module, name, preprocessing=TINY):
        return load_model(save_torchscript(module, tmp_path / name, preprocessing)).digest

    reference = digest(Scaled(2, 0.0), "ref.pt")
    assert digest(Scaled(2, 0.0), "again.pt") == reference
    assert digest(Scaled(3, 0.0), "factor.pt") != reference
    assert digest(Scaled(2, 1.0), "offset.pt") != reference
    assert digest(Scaled(2, 0.0), "prep.pt", Preprocessing(resize=16, crop=8)) != reference


def test_a_checkpoint_has_the_digest_of_the_model_it_saves_and_weights_change_it(tmp_path):
    model = create_model("glyph-cnn", embed_dim=8, seed=1)
    save(model, tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt").digest == load_model("glyph-cnn", embed_dim=8, seed=1).digest
    with torch.no_grad():
        model.head.bias[0] += 1
    assert model_digest(model, model.preprocessing) != load_model(tmp_path / "m.pt").digest
    assert model_digest(model, model.preprocessing) != model_digest(model, TINY)


def test_torchscript_extractors_with_the_same_weights_and_different_code_have_distinct_caches(glyphs, tmp_path):
    mean_path, max_path = same_weights_two_poolings(tmp_path)
    mean, max_ = torchscript_extractor(mean_path), torchscript_extractor(max_path)
    assert cache_dir(glyphs, mean) != cache_dir(glyphs, max_)


# --- malformed checkpoints ------------------------------------------------------------------------

def checkpoint_payload(**changes) -> dict:
    """A valid checkpoint of a tiny glyph-cnn (embed_dim 4, width 2) as torch.save writes it, with changes;
    a change to ``...`` deletes the field."""
    model = create_model("glyph-cnn", embed_dim=4, width=2)
    payload = {"format": "oodml-checkpoint", "version": 1, "arch": "glyph-cnn", "config": dict(model.config),
               "preprocessing": json.dumps(model.preprocessing.as_dict()), "state_dict": model.state_dict(),
               "provenance": json.dumps({"level": 1})}
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


def load_payload(payload: dict, path):
    torch.save(payload, path)
    return load_model(path)


@pytest.mark.parametrize("changes, message", [
    ({"config": {"embed_dim": -1, "width": 2, "seed": 0}}, r"embed_dim must be a positive integer, got -1"),
    ({"config": {"embed_dim": 0, "width": 2, "seed": 0}}, r"embed_dim must be a positive integer, got 0"),
    ({"config": {"embed_dim": 4, "width": -2, "seed": 0}}, r"width must be a positive integer, got -2"),
    ({"config": {"embed_dim": 10**12, "width": 2, "seed": 0}},
     r"weights do not fit glyph-cnn .*'head.bias' has shape \(4,\), the architecture \(1000000000000,\)"),
    ({"config": {"embed_dim": 4, "depth": 2}}, r"cannot be built with .*unexpected keyword argument 'depth'"),
    ({"config": [4]}, r"'config' must map glyph-cnn's argument names to values"),
    ({"state_dict": ...}, r"has no state dict \(the 'state_dict' entry with the weights\); re-save the model"),
    ({"state_dict": None}, r"has no state dict"),
    ({"state_dict": {"head.weight": 3}}, r"'state_dict' entry 'head.weight' is int, not a tensor"),
    ({"state_dict": [torch.zeros(2)]}, r"'state_dict' must map parameter names to tensors, got list"),
    ({"state_dict": {"head.weight": torch.zeros(4, 8)}}, r"weights do not fit .*missing"),
    ({"arch": ...}, r"'arch' must name a registered architecture .*got None"),
    ({"arch": "glyph-cnm"}, r"architecture 'glyph-cnm' is not registered in this oodml \(known: .*glyph-cnn"),
    ({"version": "1"}, r"checkpoint version must be an integer, got '1'"),
    ({"arch": 7 ** 10_000}, r"cannot read it as a checkpoint \(malformed or truncated file\)"),  # weights_only
    ({"provenance": "[1, 2]"}, r"'provenance' must be a JSON object in a string"),
    ({"preprocessing": {"resize": 32}}, r"'preprocessing' must be a JSON string, got dict"),
])
def test_malformed_checkpoints_are_one_line_errors(tmp_path, changes, message):
    with pytest.raises(OodmlError, match=message) as caught:
        load_payload(checkpoint_payload(**changes), tmp_path / "m.pt")
    assert str(tmp_path / "m.pt") in str(caught.value) and "\n" not in str(caught.value)


def test_values_quoted_in_messages_stay_short_whatever_their_size():
    assert brief(10**5000) == "<an integer of about 5001 digits>"   # more digits than Python writes as text
    assert brief(10**100).startswith("1000") and len(brief(10**100)) <= 60
    assert all(len(brief(value)) <= 60 for value in ("x" * 10**6, list(range(10**6)), {"a": [[[1]]] * 9}))


def test_a_checkpoint_without_preprocessing_uses_its_architectures(tmp_path):
    loaded = load_payload(checkpoint_payload(preprocessing=...), tmp_path / "m.pt")
    assert loaded.preprocessing == create_model("glyph-cnn").preprocessing and loaded.provenance == {"level": 1}


# --- malformed preprocessing.json -----------------------------------------------------------------

@pytest.mark.parametrize("record, message", [
    ({"std": [0, 0.5, 0.5]}, r"preprocessing std must be 3 positive finite numbers \(dividing by 0 gives inf\)"),
    ({"std": [-0.5, 0.5, 0.5]}, r"preprocessing std must be 3 positive finite numbers"),
    ({"mean": [float("nan"), 0.5, 0.5]},
     r"preprocessing mean must be 3 finite numbers, one per RGB channel, got \[nan"),
    ({"mean": [float("inf"), 0.5, 0.5]}, r"preprocessing mean must be 3 finite numbers"),
    ({"mean": [0.5, 0.5]}, r"preprocessing mean must be 3 finite numbers"),
    ({"mean": ["0.5", 0.5, 0.5]}, r"preprocessing mean must be 3 finite numbers"),
    ({"mean": 0.5}, r"preprocessing mean must be 3 finite numbers"),
    ({"resize": 0}, r"preprocessing resize must be a whole number of pixels from 1 to 4096, or null to skip it, got 0"),
    ({"crop": -8}, r"preprocessing crop must be a whole number of pixels"),
    ({"crop": 32.0}, r"preprocessing crop must be a whole number of pixels .*got 32.0"),
    ({"resize": "256"}, r"preprocessing resize must be a whole number of pixels"),
    ({"resize": True}, r"preprocessing resize must be a whole number of pixels"),
    ({"resize": 10**6}, r"preprocessing resize must be a whole number of pixels from 1 to 4096"),
    ({"size": 32}, r"unknown preprocessing key 'size'; the keys are resize, crop, mean, std"),
    ([256, 224], r"a preprocessing record must be a JSON object, got list"),
])
def test_invalid_preprocessing_json_is_a_one_line_error(tmp_path, record, message):
    path = save_torchscript(MeanPooled(torch.nn.Linear(3, 8)), tmp_path / "m.pt", json.dumps(record))
    with pytest.raises(OodmlError, match=f"{tmp_path / 'm.pt'}: preprocessing.json is invalid: {message}") as caught:
        load_model(path)
    assert "write it like {" in str(caught.value)


@pytest.mark.parametrize("text", [b"{", b"\xff\xfe{", b"[" * 100_000])
def test_preprocessing_json_that_is_not_json(tmp_path, text):
    path = save_torchscript(MeanPooled(torch.nn.Linear(3, 8)), tmp_path / "m.pt", text)
    with pytest.raises(OodmlError, match="preprocessing.json is not JSON"):
        load_model(path)


# --- model outputs, checked at the first embedded batch ---------------------------------------------

class Outputs(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.mean((2, 3))
        if self.kind == "zero-width":
            return flat[:, :0]
        if self.kind == "3-d":
            return flat[:, :, None]
        if self.kind == "nan":
            return flat / 0 * 0
        return flat * float("inf")


@pytest.mark.parametrize("kind, message", [
    ("zero-width", r"m.pt returned zero-width embeddings \(4, 0\) for a batch of 4 images; it must return at least"),
    ("3-d", r"m.pt returned \(4, 3, 1\) for a batch of 4 images; expected \(batch, dimensions\)"),
    ("nan", r"m.pt returned NaN or inf embeddings for 4 of 4 images in a batch; check its weights"),
    ("inf", r"m.pt returned NaN or inf embeddings"),
])
def test_bad_model_outputs_are_named_errors(glyphs, tmp_path, kind, message):
    loaded = load_model(save_torchscript(Outputs(kind), tmp_path / "m.pt"))
    with pytest.raises(OodmlError, match=message):
        embed(glyphs, loaded.module, loaded.preprocessing, indices=range(4), settings=CPU, model_name=loaded.source)


def test_a_torchscript_file_without_forward(tmp_path):
    class NoForward(torch.nn.Module):
        @torch.jit.export
        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return x

    torch.jit.script(NoForward()).save(str(tmp_path / "m.pt"))
    with pytest.raises(OodmlError, match="has no forward method to embed images with"):
        load_model(tmp_path / "m.pt")


# --- fuzzing the edge: anything in a checkpoint gives a model or an OodmlError ------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4), max_leaves=10)
TENSORS = st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype),
                    st.lists(st.integers(0, 5), max_size=3),
                    st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.complex64]))
CONFIG_VALUES = st.integers(-3, 3) | st.integers(-2**70, 2**70) | JSON
FIELD_VALUES = {
    "format": st.just("oodml-checkpoint") | JSON,
    "version": st.integers(-1, 3) | JSON,
    "arch": st.sampled_from(["glyph-cnn", "resnet50"]) | JSON,
    "config": st.dictionaries(st.sampled_from(["embed_dim", "width", "seed", "pretrained", "weights", "other"]),
                              CONFIG_VALUES, max_size=4) | JSON,
    "preprocessing": st.builds(json.dumps, st.dictionaries(st.sampled_from(["resize", "crop", "mean", "std", "x"]),
                                                           JSON | st.lists(st.floats(), max_size=4), max_size=4))
    | st.text(max_size=30) | JSON,
    "state_dict": st.dictionaries(st.sampled_from(["head.weight", "head.bias", "backbone.0.0.weight", "x"]),
                                  TENSORS | JSON, max_size=3) | JSON,
    "provenance": st.text(max_size=20) | st.builds(json.dumps, JSON) | JSON,
}


@FUZZ
@given(changes=st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=3, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELD_VALUES[k] | st.just(...) for k in keys})))
def test_hostile_checkpoint_fields(tmp_path_factory, changes):
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_payload(checkpoint_payload(**changes), path)
    except OodmlError as exc:
        assert "\n" not in str(exc)
        return
    out = loaded.module.eval()(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 4) and len(loaded.digest) == 64


@FUZZ
@given(tensors=st.dictionaries(st.sampled_from(["head.weight", "head.bias", "backbone.0.0.weight"]),
                               TENSORS | st.builds(lambda v: torch.full((4, 8), v), st.floats(width=32)), max_size=3))
def test_hostile_state_dict_tensors(tmp_path_factory, tensors):
    state = {**create_model("glyph-cnn", embed_dim=4, width=2).state_dict(), **tensors}
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_payload(checkpoint_payload(state_dict=state), path)
    except OodmlError:
        return
    assert loaded.module.head.weight.dtype == torch.float32 and len(loaded.digest) == 64
