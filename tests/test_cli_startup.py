"""A researcher's command line: quick to start, clean in logs, with help on every option (issue 29).

* ``oodml --version``, ``--help``, ``splits list`` and ``models list`` import no torch (seconds of start-up).
* Progress is a bar on a terminal only; piped (a CI log) each stage leaves one line, ``"<desc>: <n> <unit> in
  <t> s"``, and no carriage returns; embedding over several cache shards is one stage, not one per shard.
* Every option of every command says what it does (a walk over the parser).
"""

import argparse
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from oodml import progress
from oodml.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(?P<desc>.+): (?P<n>\d+) (?P<unit>\S+) in \d+\.\d s(?: \((?P<note>.*)\))?$")


def run_python(code: str, cwd: Path, *args: str, importtime: bool = True, **options) -> subprocess.CompletedProcess:
    """``python -X importtime`` running ``code`` (or ``-m oodml`` with ``args``), progress not silenced."""
    env = {k: v for k, v in os.environ.items() if k != "OODML_QUIET"}
    command = [sys.executable, *(["-X", "importtime"] if importtime else []),
               *(["-c", code] if code else ["-m", "oodml", *args])]
    return subprocess.run(command, cwd=cwd, env=env, timeout=300, **options)


def imported(importtime: str) -> set[str]:
    """The modules ``-X importtime`` reports (its stderr), by their full names."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["splits", "list"], ["models", "list"]])
def test_quick_commands_import_no_torch(args, tmp_path):
    done = run_python("", tmp_path, *args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = imported(done.stderr)
    assert "oodml.cli" in modules                                  # the report is real
    heavy = {m for m in modules if m.split(".")[0] in ("torch", "torchvision", "pytorch_metric_learning")}
    assert not heavy, sorted(heavy)[:5]


def test_models_list_without_torch_names_the_models_and_spec_forms(tmp_path):
    done = run_python("", tmp_path, "models", "list", capture_output=True, text=True)
    assert "glyph-cnn" in done.stdout and "resnet50" in done.stdout
    assert "timm:NAME" in done.stdout and "hf:ORG/NAME[@REVISION]" in done.stdout


def test_the_lazily_listed_models_describe_themselves_as_their_factories_do():
    """The registry lists the built-in models before their module (and torch) is imported; once imported,
    the descriptions are the factories' own."""
    from oodml.models.registry import MODELS

    before = [row for row in MODELS.listing() if row[0] in ("glyph-cnn", "resnet50")]   # other tests add some
    import oodml.models.zoo as zoo

    assert before == [("glyph-cnn", zoo.glyph_cnn.__doc__.split("\n")[0]),
                      ("resnet50", zoo.resnet50.__doc__.split("\n")[0])]
    MODELS.entry("glyph-cnn")                                      # loads the deferred module
    assert [row for row in MODELS.listing() if row[0] in ("glyph-cnn", "resnet50")] == before


def test_a_deferred_name_is_still_replaced_by_a_later_registration():
    from oodml.registry import Registry

    names = Registry("thing")
    names.defer("dirname", "os.path:dirname", description="the folder of a path")
    assert names.listing() == [("dirname", "the folder of a path")] and "dirname" in names
    with pytest.warns(UserWarning, match="already registered"):
        names.register("dirname", len)
    assert names["dirname"] is len
    names.defer("basename", "os.path:basename", description="the last part of a path")
    assert names["basename"]("a/b") == "b"
    with pytest.raises(Exception, match="unknown thing 'basenam'; did you mean basename"):
        names["basenam"]


def _options(parser: argparse.ArgumentParser, path: str = "oodml"):
    """``(command, action)`` for every argument of every (sub)command but ``-h``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_of_every_command_has_help():
    options = list(_options(build_parser()))
    assert len(options) > 100                                      # the walk reaches the subcommands
    silent = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in options if not (a.help or "").strip()]
    assert silent == []


def test_help_lists_the_choices_read_on_first_use(capsys):
    with pytest.raises(SystemExit):
        main(["make-splits", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "fid, sinkhorn, w2" in text and "greedy, oodml" in text and "class-mean, samples" in text


def test_a_wrong_choice_is_one_line_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["make-splits", "glyphs", "--distance", "fidd"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "invalid choice: 'fidd' (choose from 'fid', 'sinkhorn', 'w2')" in err
    args = build_parser().parse_args(["evaluate", "m", "--dataset", "glyphs", "--adapt", "prototypes",
                                      "finetune-last", "--decode", "device"])
    assert args.adapt == ["prototypes", "finetune-last"] and args.decode == "device"


# --- progress: bars on a terminal, one line per stage elsewhere -----------------------------------------

STAGES = """
from oodml.progress import counter, progress, stage
for _ in progress(range(300), "count things", total=300, unit="thing"):
    pass
bar = counter("search: harder splits")
for _ in range(7):
    bar.set_postfix_str("distance 1.5")
    bar.update()
bar.close()
with stage("features glyph-cnn", total=40, unit="img") as counted:
    for shard in range(4):
        counted.update(10)
"""


def test_piped_progress_is_one_line_per_stage_without_carriage_returns(tmp_path):
    done = run_python(STAGES, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    assert "\r" not in err
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    found = [LINE.match(line).group("desc", "n", "unit", "note") for line in lines]
    assert found == [("count things", "300", "thing", None), ("search: harder splits", "7", "step", "distance 1.5"),
                     ("features glyph-cnn", "40", "img", None)]


def test_on_a_terminal_progress_is_drawn_as_bars(tmp_path):
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws 0 columns in 0
    done = run_python(STAGES, tmp_path, importtime=False, stdout=subprocess.DEVNULL, stderr=child)
    os.close(child)
    drawn = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:                                            # the terminal closed
            break
        if not chunk:
            break
        drawn += chunk
    os.close(parent)
    assert done.returncode == 0
    assert b"\rcount things:   0%|" in drawn and b"\rfeatures glyph-cnn:   0%|" in drawn
    assert not re.search(rb"count things: 300 thing in", drawn)   # no log line under a bar


@pytest.fixture
def loud(monkeypatch):
    """Progress on (the test session runs with OODML_QUIET=1); pytest's captured stderr is no terminal."""
    monkeypatch.setattr(progress, "_quiet", False)


def test_a_stage_that_fails_or_is_dropped_early_leaves_no_line(loud, capsys):
    with pytest.raises(ValueError), progress.stage("doomed", total=3) as counted:
        counted.update()
        raise ValueError("midway")
    items = progress.progress(range(10), "abandoned", total=10)
    next(items)
    items.close()
    assert capsys.readouterr().err == ""


def test_a_loop_that_stops_after_its_total_completes_its_stage(loud, capsys):
    """A training loop takes exactly ``total`` batches from an endless loader and stops."""
    endless = iter(int, 1)
    for step, _ in enumerate(progress.progress(endless, "train level 1", total=4, unit="it"), start=1):
        if step >= 4:
            break
    assert LINE.match(capsys.readouterr().err.strip()).group("desc", "n") == ("train level 1", "4")


def test_quiet_means_no_line_either(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_quiet", True)
    list(progress.progress(range(3), "hushed", total=3))
    assert capsys.readouterr().err == ""


def test_embedding_over_several_cache_shards_is_one_stage(loud, glyphs, capsys, tmp_path, monkeypatch):
    """Five shards of 8 images, one line; a rerun says that everything came from the cache."""
    from oodml.embedding import EmbedSettings, embed_cached
    from oodml.models import load_model

    monkeypatch.setenv("OODML_HOME", str(tmp_path))
    model = load_model("glyph-cnn", embed_dim=4, seed=3)
    capsys.readouterr()
    for _ in range(2):
        embed_cached(glyphs, model.module, model.preprocessing, model.digest, range(40), shard_size=8,
                     settings=EmbedSettings("cpu", batch_size=4), desc="features glyph-cnn")
    stages = [LINE.match(line).group("desc", "n", "note") for line in capsys.readouterr().err.splitlines()]
    first, again = [found for found in stages if found[0] == "features glyph-cnn"]   # before: 5 + 0 lines
    assert first == ("features glyph-cnn", "40", "0 of 40 read from the cache")
    assert again == ("features glyph-cnn", "0", "40 of 40 read from the cache")


# --- truthful labels ----------------------------------------------------------------------------------------

def test_a_rerun_of_train_says_which_checkpoints_it_kept(tmp_path, monkeypatch, capsys):
    """``train`` keeps a finished level of the same configuration; the line then says so, not "trained"."""
    import oodml.training

    retrain = [False, True]                  # asked on each rerun: the second rerun trains level 1 again

    def train_levels(ds, split_set, levels, config, *, out, report, **options):
        path = Path(out) / "level1.pt"
        if not path.exists() or retrain.pop(0):                        # what training.train decides
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(os.urandom(8))
        report(1, {"best_val_recall@1": 0.5})

    monkeypatch.setattr(oodml.training, "train_levels", train_levels)
    out = tmp_path / "runs"
    command = ["train", "--dataset", "glyphs", "--level", "1", "--iterations", "2", "--out", str(out)]
    lines = []
    for _ in range(3):
        assert main(command) == 0
        lines.append(capsys.readouterr().out.strip())
    assert lines == [f"level 1: best val recall@1 0.5000 -> {out}/level1.pt",
                     f"level 1: kept {out}/level1.pt, trained earlier with this configuration "
                     "(best val recall@1 0.5000)",
                     f"level 1: best val recall@1 0.5000 -> {out}/level1.pt"]


def test_the_search_printed_is_the_one_that_ran():
    """``--algorithm greedy`` scores every balanced split when few classes allow: the table says exhaustive."""
    from oodml.splits import load
    from oodml.splits.report import format_levels, searched_with

    exhaustive = {"algorithm": "greedy", "search": {"method": "exhaustive", "partitions": 126}}
    assert searched_with(exhaustive) == "exhaustive"
    assert searched_with({"algorithm": "greedy", "search": {"method": "greedy"}}) == "greedy"
    assert searched_with({"algorithm": "oodml (imported)"}) == "oodml (imported)"
    assert "features, algorithm greedy\n" in format_levels(load("glyphs", "v1"))   # 20+ classes: swaps ran


def test_the_lazy_split_package_keeps_its_functions_named_like_its_modules():
    """``oodml.splits.compare`` and ``.audit`` are functions, also after their submodules have loaded."""
    import importlib

    importlib.import_module("oodml.splits.compare")
    importlib.import_module("oodml.splits.audit")
    from oodml.splits import audit, compare, load

    assert callable(compare) and callable(audit)
    assert compare(load("glyphs", "v1"), load("glyphs", "v1")).reproduces
