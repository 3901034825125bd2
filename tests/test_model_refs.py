"""One reading of a model reference (oodml.models.refs), whatever command or function is given it: a spec, then
a registered name, then a per-level template or directory, then a file; what the current directory holds
never changes what a name or a spec means, and a path written as ./NAME reaches the file."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from cli_run import one_line_error, run

from oodml import OodmlError
from oodml.cli import build_parser
from oodml.evaluation import _per_level_path
from oodml.features import get_extractor
from oodml.models import create_model, load_model, register_model, save
from oodml.models.refs import PRECEDENCE, resolve_model_ref
from oodml.models.sources import SOURCES, Source, is_spec, register_source
from oodml.preprocessing import Preprocessing


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def glyph_checkpoint(path: Path) -> Path:
    """A real oodml checkpoint of a 4-d glyph CNN at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save(create_model("glyph-cnn", embed_dim=4, seed=1), path)


def quiet_load(ref, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(ref, **kwargs)


def test_each_form_is_read_as_itself(workdir):
    glyph_checkpoint(workdir / "runs" / "level1.pt")
    assert PRECEDENCE == ("spec", "registered", "per-level", "file")
    assert resolve_model_ref("timm:resnet18?pretrained=false").kind == "spec"
    ref = resolve_model_ref("resnet50?pretrained=false,embed_dim=8")
    assert (ref.kind, ref.name, ref.options) == ("registered", "resnet50", {"pretrained": False, "embed_dim": 8})
    template = resolve_model_ref("runs/level{level}.pt")
    assert template.kind == "per-level" and template.level_path(3) == Path("runs/level3.pt")
    folder = resolve_model_ref("runs")
    assert folder.kind == "per-level" and folder.level_path(2) == Path("runs/level2.pt")
    file = resolve_model_ref("runs/level1.pt")
    assert file.kind == "file" and file.path == Path("runs/level1.pt")


def test_a_name_that_is_also_a_file_in_the_current_directory_is_the_registered_model(workdir):
    (workdir / "glyph-cnn").write_bytes(b"not a checkpoint")        # would fail to load, were it read
    assert resolve_model_ref("glyph-cnn").kind == "registered"
    assert quiet_load("glyph-cnn", embed_dim=4).module.embed_dim == 4
    assert create_model("glyph-cnn", embed_dim=4).embed_dim == 4
    assert build_parser().parse_args(["train", "--dataset", "glyphs", "--arch", "glyph-cnn", "--out", "x"]).arch \
        == "glyph-cnn"
    assert _per_level_path("glyph-cnn", 1) is None                    # evaluate: one shared model
    # written as a path, it is the file, for every reader
    assert resolve_model_ref("./glyph-cnn").kind == "file" and resolve_model_ref(Path("glyph-cnn")).kind == "file"
    with pytest.raises(OodmlError, match="cannot read it as a checkpoint"):
        load_model("./glyph-cnn")


def test_an_extractor_name_that_is_also_a_file_is_the_extractor(workdir):
    (workdir / "pixels").write_bytes(b"junk")
    assert get_extractor("pixels").id == "pixels-16"
    with pytest.raises(OodmlError, match="not a loadable TorchScript|cannot read it as a checkpoint"):
        get_extractor("./pixels")


def test_a_directory_named_like_a_registered_model_is_per_level_only_as_a_path(workdir):
    glyph_checkpoint(workdir / "glyph-cnn" / "level1.pt")
    assert resolve_model_ref("glyph-cnn").kind == "registered"
    assert _per_level_path("glyph-cnn", 1) is None
    assert _per_level_path("./glyph-cnn", 1) == Path("glyph-cnn/level1.pt")
    assert _per_level_path(Path("glyph-cnn"), 2) == Path("glyph-cnn/level2.pt")  # a Path is always a path
    with pytest.raises(OodmlError, match=r"^\./glyph-cnn names one checkpoint per level, but loading a model takes "
                                         r"one model; name one of them, e\.g\. glyph-cnn/level1\.pt$"):
        load_model("./glyph-cnn")


def test_a_spec_looking_text_that_is_also_a_path_is_the_spec(workdir):
    glyph_checkpoint(workdir / "timm:glyph")                          # a file named like a spec
    (workdir / "hf:org" / "name").mkdir(parents=True)                # and a folder
    assert resolve_model_ref("timm:glyph").kind == "spec"
    assert resolve_model_ref("hf:org/name").kind == "spec"
    with pytest.raises(OodmlError, match="timm has no model 'glyph'"):
        load_model("timm:glyph")
    assert quiet_load("./timm:glyph").module.embed_dim == 4           # the file, written as a path
    assert resolve_model_ref("./hf:org/name").kind == "per-level"


def test_a_template_wins_over_everything_but_a_spec_or_name_and_is_checked_before_loading(workdir):
    with pytest.raises(OodmlError, match=r"the only placeholder allowed is \{level\}"):
        resolve_model_ref("runs/{seed}/level{level}.pt")
    with pytest.raises(OodmlError, match="is a registered model|names a registered model"):
        resolve_model_ref("glyph-cnn").level_path(1)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty model reference"),
    ("   ", "empty model reference"),
    ("glyph_cnn", "unknown model 'glyph_cnn'; did you mean glyph-cnn"),
    ("runs/missing.pt", "model file runs/missing.pt does not exist"),
    ("glyph-cnn?embed_dim", "option 'embed_dim' must be written key=value"),
    ("glyph-cnn?seed=1,seed=2", "option 'seed' is given twice"),
])
def test_what_names_nothing_is_refused_in_one_line(workdir, text, message):
    with pytest.raises(OodmlError, match=message) as info:
        resolve_model_ref(text)
    assert "\n" not in str(info.value)


def test_commands_read_the_same_ambiguous_reference_the_same_way(workdir):
    (workdir / "glyph-cnn").mkdir()
    code, lines = run("train", "--dataset", "glyphs", "--arch", "./glyph-cnn", "--out", "out")
    assert "'./glyph-cnn' names a per-level model, not an architecture" in one_line_error(code, lines)
    code, lines = run("make-splits", "glyphs", "--extractor", "./glyph-cnn", "--out", "splits")
    assert "./glyph-cnn names one checkpoint per level, but an extractor takes one model" in \
        one_line_error(code, lines)


def test_an_extractor_name_takes_no_options():
    with pytest.raises(OodmlError, match=r"an extractor name takes no \?options; give the weights file with "
                                         "--weights PATH"):
        get_extractor("pixels?size=8")


def test_a_name_that_could_never_be_reached_cannot_be_registered():
    for name in ("timm:mine", "mine?x=1", "level{level}"):
        with pytest.raises(OodmlError, match="would be read as a model spec, options or a per-level template"):
            register_model(name)(lambda **kw: torch.nn.Identity())


def test_create_model_builds_architectures_only(workdir):
    glyph_checkpoint(workdir / "m.pt")
    with pytest.raises(OodmlError, match="'m.pt' names a model file, not an architecture to build; load it with "
                                         "oodml.models.load_model"):
        create_model("m.pt")


def test_resolving_runs_no_code_and_imports_no_torch(workdir):
    (workdir / "hub").mkdir()
    (workdir / "hub" / "hubconf.py").write_text(f"open({str(workdir / 'ran')!r}, 'w').write('ran')\n")
    assert resolve_model_ref("torchhub:./hub:tiny").kind == "spec" and not (workdir / "ran").exists()
    code = ("import sys; from oodml.models.refs import resolve_model_ref as r; "
            "kinds = [r(t).kind for t in ('timm:x', 'glyph-cnn', 'runs/level{level}.pt')]; "
            "assert kinds == ['spec', 'registered', 'per-level'], kinds; assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_a_registered_source_is_a_spec_for_every_reader(workdir):
    def build(spec, library):
        module = torch.nn.Flatten()
        return module, Preprocessing(resize=4, crop=4), None

    register_source(Source("mylib", "mylib:NAME", "json", "all", "a test library", (), build))
    try:
        assert is_spec("mylib:anything") and resolve_model_ref("mylib:anything").kind == "spec"
        with pytest.warns(UserWarning, match="RANDOM weights"):
            loaded = load_model("mylib:anything?pretrained=false")
        assert loaded.identity["source"] == "mylib" and loaded.identity["library"].startswith("json ")
        with pytest.warns(UserWarning, match="model source 'mylib' was already registered; replacing it"):
            register_source(Source("mylib", "mylib:NAME", "json", "all", "again", (), build))
    finally:
        del SOURCES["mylib"]
    assert not is_spec("mylib:anything")
    with pytest.raises(OodmlError, match=r"unknown model 'mylib:anything'|model file mylib:anything does not exist"):
        resolve_model_ref("mylib:anything")
