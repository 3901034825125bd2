"""No code runs unasked: a checkpoint never names code to run, a torch hub repository runs only after the user
agreed (torch's own question on a terminal, or --trust-repo / OODML_TRUST_REPO=1, which leave torch's trusted
list alone), and a local folder is read only when the spec says so (./, ../, / or ~), never because the current
directory happens to hold a folder named like a hub id.

Every hub repository here is a folder seeded into a private torch hub cache, or a zip served by a stand-in for
torch's downloader: nothing goes to the network."""

import io
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from oodml import OodmlError
from oodml.cli import main
from oodml.models import load_model
from oodml.models.sources import parse_spec

#: a hubconf.py that leaves a marker file when it is run, with a module entry and two hostile ones
HUBCONF = '''
import pathlib
import sys

import torch

pathlib.Path({marker!r}).write_text("ran")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 4, stride=4)
        self.preprocessing = {{"resize": 8, "crop": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def tiny(pretrained=True):
    return Tiny()


def not_a_model(pretrained=True):
    return "a string"


def quits(pretrained=True):
    sys.exit(0)
'''
HUB_SPEC = "torchhub:someone/tinyhub@main:tiny"


@pytest.fixture(autouse=True)
def no_consent(monkeypatch):
    """No agreement given beforehand, and a clean module table (every repository here names its file
    hubconf.py, which torch imports under that name)."""
    monkeypatch.delenv("OODML_TRUST_REPO", raising=False)
    yield
    sys.modules.pop("hubconf", None)


@pytest.fixture
def marker(tmp_path) -> Path:
    """The file a hubconf.py writes when it runs."""
    return tmp_path / "hubconf-ran"


def write_hubconf(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hubconf.py").write_text(HUBCONF.format(marker=str(marker)))
    return folder


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """A private torch hub folder whose trusted list names another repository."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = Path(torch.hub.get_dir())
    hub.mkdir(parents=True)
    (hub / "trusted_list").write_text("someone_else\n")
    return hub


@pytest.fixture
def cached_repo(hub_dir, marker) -> Path:
    """someone/tinyhub at ref main, as torch.hub leaves it in its cache after a download."""
    return write_hubconf(hub_dir / "someone_tinyhub_main", marker)


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


# --- checkpoints name no code --------------------------------------------------------------------------------

def write_checkpoint(path: Path, arch: str) -> Path:
    torch.save({"format": "oodml-checkpoint", "version": 1, "arch": arch, "config": {},
                "state_dict": {"conv.weight": torch.zeros(4, 3, 4, 4)}}, path)
    return path


@pytest.mark.parametrize("arch", ["torchhub:.:tiny", "torchhub:./repo:tiny", "torchhub:{repo}:tiny",
                                  "torchhub:someone/tinyhub@main:tiny"])
def test_a_checkpoint_naming_torch_hub_code_is_refused_before_it_runs(arch, tmp_path, marker, cached_repo,
                                                                      monkeypatch):
    write_hubconf(tmp_path, marker)
    write_hubconf(tmp_path / "repo", marker)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OODML_TRUST_REPO", "1")  # agreeing to run hub code does not extend to checkpoints
    path = write_checkpoint(tmp_path / "model.pt", arch.format(repo=tmp_path / "repo"))
    with pytest.raises(OodmlError, match="refused checkpoint architecture.*torch hub repository is code") as info:
        load_model(path)
    assert one_line(info).startswith(f"{path}: ")
    assert not marker.exists()


@pytest.mark.parametrize("arch", ["hf:./vit", "hf:~/vit", "timm:local-dir:/models/vit"])
def test_a_checkpoint_naming_a_local_folder_is_refused(arch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_checkpoint(tmp_path / "model.pt", arch)
    with pytest.raises(OodmlError, match=rf"refused checkpoint architecture '{arch}': .* is a local folder"):
        load_model(path)


def test_the_cli_refuses_such_a_checkpoint_in_one_line(tmp_path, marker, monkeypatch, capsys):
    write_hubconf(tmp_path, marker)
    monkeypatch.chdir(tmp_path)
    write_checkpoint(tmp_path / "model.pt", "torchhub:.:tiny")
    assert main(["-q", "evaluate", "model.pt", "--dataset", "glyphs", "--splits", "v1", "--levels", "1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "refused checkpoint architecture" in lines[0], lines
    assert not marker.exists()


def test_training_on_torch_hub_code_is_refused_up_front(tmp_path, marker):
    from oodml.models import create_model

    repo = write_hubconf(tmp_path / "repo", marker)
    with pytest.raises(OodmlError, match="cannot be a training backbone: a torch hub repository is code"):
        create_model(f"torchhub:{repo}:tiny", embed_dim=8)
    assert not marker.exists()


def test_oodml_train_refuses_such_a_backbone_before_writing_anything(tmp_path, marker, capsys):
    repo = write_hubconf(tmp_path / "repo", marker)
    for arch in (f"torchhub:{repo}:tiny", "hf:./vit"):
        with pytest.raises(SystemExit) as exited:  # a usage error, before the dataset is even opened
            main(["-q", "train", "--dataset", "glyphs", "--arch", arch, "--out", str(tmp_path / "out")])
        assert exited.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and "cannot be a training backbone" in lines[0], lines
    assert not marker.exists() and not (tmp_path / "out").exists()


# --- a hub repository runs only with the user's agreement ------------------------------------------------------

def test_without_a_terminal_or_agreement_nothing_runs_and_the_trusted_list_is_untouched(cached_repo, marker,
                                                                                        hub_dir):
    with pytest.raises(OodmlError, match=r"needs your agreement.*--trust-repo or set OODML_TRUST_REPO=1") as info:
        load_model(HUB_SPEC)
    assert one_line(info).startswith(f"{HUB_SPEC}: ")
    assert not marker.exists()
    assert (hub_dir / "trusted_list").read_text() == "someone_else\n"


def test_the_cli_says_so_in_one_line_with_exit_status_2(cached_repo, marker, capsys):
    assert main(["-q", "evaluate", HUB_SPEC, "--dataset", "glyphs", "--splits", "v1", "--levels", "1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--trust-repo" in lines[0], lines
    assert not marker.exists()


@pytest.mark.parametrize("argv", [["--trust-repo", "evaluate", HUB_SPEC, "--dataset", "glyphs"],
                                  ["evaluate", HUB_SPEC, "--dataset", "glyphs", "--trust-repo"], None])
def test_agreement_given_beforehand_runs_it_and_leaves_the_trusted_list_alone(argv, cached_repo, marker, hub_dir,
                                                                             monkeypatch):
    if argv is None:
        monkeypatch.setenv("OODML_TRUST_REPO", "1")
    else:  # the flag, before or after the command, agrees for the models that command loads
        monkeypatch.setattr("oodml.cli.cmd_evaluate", lambda args: load_model(args.model) and 0)
        assert main(argv) == 0
    loaded = load_model(HUB_SPEC)
    assert loaded.module(torch.zeros(1, 3, 8, 8)).shape == (1, 4)
    assert marker.read_text() == "ran"
    assert (hub_dir / "trusted_list").read_text() == "someone_else\n"
    assert torch.hub._check_repo_is_trusted.__module__ == "torch.hub"  # torch's own check is back in place


@pytest.mark.parametrize("value", ["0", "", "no"])
def test_other_values_of_the_variable_are_no_agreement(value, cached_repo, marker, monkeypatch):
    monkeypatch.setenv("OODML_TRUST_REPO", value)
    with pytest.raises(OodmlError, match="needs your agreement"):
        load_model(HUB_SPEC)
    assert not marker.exists()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def github(hub_dir, marker, monkeypatch, tmp_path):
    """A terminal, and torch's GitHub calls replaced: its fork validation is recorded, its download writes a
    zip of someone/tinyhub. Returns the list of validated refs."""
    validated = []
    source = write_hubconf(tmp_path / "served" / "tinyhub-main", marker)

    def download(url, dst, progress=True):
        with zipfile.ZipFile(dst, "w") as z:
            z.write(source, "tinyhub-main/")
            z.write(source / "hubconf.py", "tinyhub-main/hubconf.py")

    monkeypatch.setattr(torch.hub, "_validate_not_a_forked_repo", lambda *ref: validated.append(ref))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(sys, "stdin", Terminal())
    return validated


def test_on_a_terminal_torch_asks_and_no_means_nothing_runs(github, marker, hub_dir, monkeypatch):
    questions = []
    monkeypatch.setattr("builtins.input", lambda question: questions.append(question) or "n")
    with pytest.raises(OodmlError, match=r"someone/tinyhub not trusted, so nothing was downloaded or run") as info:
        load_model(HUB_SPEC)
    one_line(info)
    assert len(questions) == 1 and "someone_tinyhub" in questions[0]
    assert not marker.exists() and not github
    assert (hub_dir / "trusted_list").read_text() == "someone_else\n"


def test_on_a_terminal_yes_runs_it_after_torch_checked_the_ref_is_no_fork(github, marker, hub_dir, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda question: "y")
    loaded = load_model(HUB_SPEC)
    assert loaded.module(torch.zeros(1, 3, 8, 8)).shape == (1, 4)
    assert github == [("someone", "tinyhub", "main")] and marker.exists()
    # the user's own answer: torch records it in its list, as it does without oodml
    assert (hub_dir / "trusted_list").read_text() == "someone_else\nsomeone_tinyhub\n"


def test_fork_validation_stays_on_with_agreement_given_beforehand(github, marker, monkeypatch):
    def fork(owner, name, ref):
        raise ValueError(f"Cannot find {ref} in https://github.com/{owner}/{name}. If it's a commit from a forked "
                         "repo, please call hub.load() with forked repo directly.")

    monkeypatch.setattr(torch.hub, "_validate_not_a_forked_repo", fork)
    monkeypatch.setenv("OODML_TRUST_REPO", "1")
    with pytest.raises(OodmlError, match="Cannot find main in https://github.com/someone/tinyhub"):
        load_model(HUB_SPEC)
    assert not marker.exists()


# --- local folders only when the spec says so -------------------------------------------------------------------

def test_a_cwd_folder_named_like_a_hub_repository_is_not_run(tmp_path, marker, hub_dir, monkeypatch):
    write_hubconf(tmp_path / "facebookresearch" / "dinov2", marker)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OodmlError, match="needs your agreement"):
        load_model("torchhub:facebookresearch/dinov2:tiny")
    assert not marker.exists()


def test_an_explicit_local_torch_hub_folder_is_the_users_own_code(tmp_path, marker, monkeypatch):
    write_hubconf(tmp_path / "my@repo", marker)
    monkeypatch.chdir(tmp_path)
    loaded = load_model("torchhub:./my@repo:tiny")
    assert loaded.source == "torchhub:./my@repo:tiny" and parse_spec(loaded.source).revision is None
    assert loaded.identity["pretraining"] is None and marker.exists()


def test_a_bare_folder_name_is_not_a_hub_id_and_says_how_to_name_a_folder(tmp_path, marker, monkeypatch):
    write_hubconf(tmp_path / "repo", marker)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OodmlError, match=r"'repo' is not a hub id.*start the path with ./, ../, / or ~, as in "
                                         r"torchhub:./FOLDER:tiny"):
        load_model("torchhub:repo:tiny")
    assert not marker.exists()


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    """A tiny ViT saved with save_pretrained."""
    import transformers as tf

    root = tmp_path_factory.mktemp("hf") / "vit"
    torch.manual_seed(0)
    config = tf.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          image_size=16, patch_size=8)
    tf.ViTModel(config).save_pretrained(root)
    tf.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root)
    return root


def test_a_cwd_folder_named_like_a_hub_id_is_not_read_as_the_hub_model(vit_folder, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(vit_folder, tmp_path / "facebook" / "dinov2-small")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OodmlError, match=r"the current directory holds facebook/dinov2-small.*hf:./facebook/"):
        load_model("hf:facebook/dinov2-small")
    local = load_model("hf:./facebook/dinov2-small")
    assert local.identity["pretraining"] is None            # a folder does not declare the hub model's pretraining
    assert local.module(torch.zeros(1, 3, 16, 16)).shape == (1, 16)


def test_an_hf_folder_with_at_in_its_name_is_a_folder_not_a_revision(vit_folder, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(vit_folder, tmp_path / "vit@v2")
    monkeypatch.chdir(tmp_path)
    spec = parse_spec("hf:./vit@v2")
    assert (spec.name, spec.revision) == ("./vit@v2", None)
    assert load_model("hf:./vit@v2").module(torch.zeros(1, 3, 16, 16)).shape == (1, 16)
    assert parse_spec("hf:facebook/dinov2-small@v2").revision == "v2"


def test_a_missing_local_hf_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OodmlError, match=r"hf:./nowhere: no folder nowhere; name a folder written by save_pretrained"):
        load_model("hf:./nowhere")


# --- the messages ------------------------------------------------------------------------------------------------

def test_an_entry_returning_no_module_is_one_line(tmp_path, marker):
    repo = write_hubconf(tmp_path / "repo", marker)
    with pytest.raises(OodmlError, match=r"entry 'not_a_model' returned str, not a torch.nn.Module") as info:
        load_model(f"torchhub:{repo}:not_a_model")
    one_line(info)


def test_an_entry_calling_exit_is_an_error_not_a_success(tmp_path, marker, capsys):
    repo = write_hubconf(tmp_path / "repo", marker)
    with pytest.raises(OodmlError, match=r"the model's code called exit\(0\) while building it"):
        load_model(f"torchhub:{repo}:quits")
    assert main(["-q", "evaluate", f"torchhub:{repo}:quits", "--dataset", "glyphs", "--splits", "v1",
                 "--levels", "1", "--out", str(tmp_path / "r")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "called exit(0)" in lines[0], lines
    assert not (tmp_path / "r" / "summary.json").exists()


@pytest.mark.parametrize("text, message", [
    ("timm:", "empty name; write timm:NAME"),
    ("hf:", r"empty name; write hf:ORG/NAME\[@REVISION\]"),
    ("timm:?pretrained=false", "empty name; write timm:NAME"),
    ("torchhub:", "write torchhub:REPO:ENTRY"),
])
def test_a_source_without_a_name_says_what_to_write(text, message, capsys):
    with pytest.raises(OodmlError, match=message):
        load_model(text)
    assert main(["-q", "evaluate", text, "--dataset", "glyphs"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "unknown model" not in lines[0], lines
