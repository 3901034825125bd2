"""No result is lost: an evaluation's --out, a stored audit and a leaderboard entry have one writer at a time.

Every collision here is between two real processes: one is started and paused inside the writer (a
function it calls is replaced by a pause), the other runs for real; then the first is killed with SIGKILL
midway, and what it leaves must neither block the next run nor be read as a result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oodml._fs import claim, lock_path, remove_abandoned, remove_leftovers
from oodml.cli import main
from oodml.errors import OodmlError
from oodml.leaderboard import iter_entries
from oodml.results import Results
from oodml.splits import load, read_split_set

TESTS = Path(__file__).resolve().parent

PAUSED_RUN = """
import importlib, os, pathlib, sys, time
flag, target, code = sys.argv[1:4]
sys.path.insert(0, {tests!r})
def pause(*args, **kwargs):
    pathlib.Path(flag).write_text(str(os.getpid()))
    time.sleep(600)
if target != "-":
    path, name = target.rsplit(".", 1)
    try:
        owner = importlib.import_module(path)
    except ModuleNotFoundError:
        module, cls = path.rsplit(".", 1)
        owner = getattr(importlib.import_module(module), cls)
    setattr(owner, name, pause)
exec(code)
"""


@contextlib.contextmanager
def paused(tmp_path: Path, target: str, code: str) -> Iterator[subprocess.Popen]:
    """Run ``code`` in a new Python process with ``target`` (``module.function`` or ``module.Class.method``,
    ``-`` for none: ``code`` calls ``pause()`` itself) replaced by a pause; yield the process once it has
    reached the pause.  It is killed on leaving."""
    flag = tmp_path / f"paused-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_RUN.format(tests=str(TESTS)), str(flag), target, code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not flag.exists():
            if proc.poll() is not None:
                pytest.fail(f"the paused process ended first (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the paused process did not reach its pause in 180 s")
            time.sleep(0.1)
        yield proc
    finally:
        kill(proc)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no handler, no finally block, no clean-up runs in the killed process."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()


def oodml(*argv: str) -> subprocess.CompletedProcess:
    """The ``oodml`` command in a process of its own."""
    return subprocess.run([sys.executable, "-m", "oodml", *argv], capture_output=True, text=True, timeout=300)


def tiny_run(model: str) -> Results:
    """A two-level evaluation run of ``model`` on glyphs@v1, made up (what is saved, not how it was measured)."""
    digest = load("glyphs", "v1").digest
    rows = [{"model": model, "model_digest": "0" * 64, "dataset": "glyphs", "split_digest": digest, "level": lv,
             "distance": d, "protocol": "zero-shot", "adaptation": "none", "shots": 0, "episode": 0,
             "metric": "recall@1", "value": value} for lv, d, value in ((1, 0.1, 0.8), (2, 0.9, 0.4))]
    levels = [{"level": 1, "distance": 0.1, "ci_low": 0.05, "ci_high": 0.15},
              {"level": 2, "distance": 0.9, "ci_low": 0.85, "ci_high": 0.95}]
    meta = {"model": model, "dataset": "glyphs", "split_digest": digest, "splits": "glyphs@v1"}
    return Results(rows, levels, meta)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- evaluate --out --------------------------------------------------------------------------------

def test_a_second_evaluation_into_the_same_out_is_refused_in_one_line(tmp_path):
    out = tmp_path / "results"
    evaluate = ["evaluate", "glyph-cnn", "--dataset", "glyphs", "--levels", "1", "--no-clustering",
                "--device", "cpu", "--out", str(out)]
    first = f"from oodml.cli import main; sys.exit(main({['-q', *evaluate]!r}))"
    with paused(tmp_path, "oodml.evaluation.evaluate", first) as running:  # it has checked --out, is evaluating
        second = oodml("-q", *evaluate)
        assert second.returncode == 2
        message = second.stderr.strip()
        assert "\n" not in message and f"--out {out} is being written by another process (pid {running.pid} " in \
            message and "choose another --out" in message
        assert "wrote" not in second.stdout and not out.exists()
    # the first was killed midway: its claim went with it, and a run saves as usual
    written = tiny_run("glyph-cnn").save(out)
    assert {p.name for p in written} >= {"results.parquet", "summary.json"}
    assert hidden(tmp_path) == []


def test_a_run_killed_while_saving_leaves_nothing_that_reads_as_a_result(tmp_path):
    out = tmp_path / "results"
    tiny_run("a").save(out)
    code = f"from test_claims import tiny_run; tiny_run('a').save({str(out)!r})"
    with paused(tmp_path, "oodml.results.Results.summary", code):  # results.parquet staged, summary.json not
        staged = [p for p in tmp_path.iterdir() if p.name.startswith(".results.") and p.name.endswith(".tmp")]
        assert len(staged) == 1 and (staged[0] / "results" / "results.parquet").exists()
        with pytest.raises(OodmlError, match=r"--out .*results is being written by another process \(pid "):
            tiny_run("a").save(out)
    assert sorted(p.name for p in out.iterdir()) == ["curve-recall_at_1.png", "curve-recall_at_1.svg",
                                                      "results.parquet", "summary.json"]
    assert Results.from_parquet(out / "results.parquet").meta["model"] == "a"  # the earlier run, whole
    assert len(hidden(tmp_path)) == 2  # the killed run's staging folder and its lock file ...
    tiny_run("a").save(out)
    assert hidden(tmp_path) == []      # ... tidied by the next run into that --out


def test_a_run_killed_between_its_two_renames_loses_nothing(tmp_path):
    """Replacing a run renames the old folder aside, then the new one in: a kill between the two leaves
    no --out at all, so the next writer puts the old run back before it checks."""
    out = tmp_path / "results"
    tiny_run("a").save(out)
    os.replace(out, tmp_path / ".results.4242.old")
    with pytest.raises(OodmlError, match=r"holds another run \(a on glyphs@v1\); pass --overwrite"):
        tiny_run("b").save(out)
    assert Results.from_parquet(out / "results.parquet").meta["model"] == "a" and hidden(tmp_path) == []


def test_another_run_in_out_is_still_refused_and_the_same_run_replaced(tmp_path):
    out = tmp_path / "results"
    tiny_run("a").save(out)
    tiny_run("a").save(out)  # `make demo` run twice
    with pytest.raises(OodmlError, match="holds another run"):
        tiny_run("b").save(out)
    tiny_run("b").save(out, overwrite=True)
    assert Results.from_parquet(out / "results.parquet").meta["model"] == "b"


# --- the claim itself ------------------------------------------------------------------------------

def test_claims_nest_in_one_process_and_leave_no_lock_behind(tmp_path):
    dest = tmp_path / "x"
    with claim(dest, what="x", fix="wait") as held:
        assert lock_path(dest).exists()
        with claim(dest, what="x", fix="wait"):
            assert held == dest
    assert not lock_path(dest).exists()


def test_without_fcntl_a_lock_file_made_with_o_excl_claims_and_says_how_to_clear_it(tmp_path, monkeypatch):
    """Where ``fcntl`` is missing (Windows), a killed writer's lock file stays: the refusal names it."""
    import oodml._fs

    monkeypatch.setattr(oodml._fs, "fcntl", None)
    dest = tmp_path / "results"
    with claim(dest, what="--out results", fix="choose another --out"):
        assert "pid " in lock_path(dest).read_text()
    assert not lock_path(dest).exists()
    lock_path(dest).write_text("pid 99999 on elsewhere, since 2026-12-07 15:00:00 UTC\n")  # its writer was killed
    refused = r"\(pid 99999 on elsewhere, since .*\); wait for it to finish or choose another --out; if it no " \
        r"longer runs, delete .*\.results\.lock$"
    with pytest.raises(OodmlError, match=refused), claim(dest, what="--out results", fix="choose another --out"):
        pass
    lock_path(dest).unlink()
    with claim(dest, what="--out results", fix="choose another --out"):
        pass


def test_leftovers_of_one_name_are_not_those_of_a_longer_name(tmp_path):
    """``.a.b.<8>.tmp`` belongs to ``a.b``, never to ``a``: tidying ``a`` must not touch a live writer of ``a.b``."""
    for name in (".a.abcd_123.tmp", ".a.b.abcd_123.tmp", ".a.77.old", ".a.b.77.old", ".ab.abcd_123.tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "a").mkdir()
    assert [p.name for p in remove_leftovers(tmp_path / "a")] == [".a.77.old", ".a.abcd_123.tmp"]
    assert hidden(tmp_path) == [".a.b.77.old", ".a.b.abcd_123.tmp", ".ab.abcd_123.tmp"]


def test_tidying_spares_what_a_live_process_claims(tmp_path):
    (tmp_path / ".dead.abcdefgh.tmp").mkdir()
    (tmp_path / ".dead.lock").write_text("pid 1 on a host that was killed")
    code = f"from oodml._fs import claim\nwith claim({str(tmp_path / 'live')!r}, what='live', fix='wait'):\n    pause()"
    with paused(tmp_path, "-", code):  # holds the claim on 'live' while paused
        (tmp_path / ".live.abcdefgh.tmp").mkdir()  # as if it were staging its result
        remove_abandoned(tmp_path)
        assert hidden(tmp_path) == [".live.abcdefgh.tmp", ".live.lock"]
    remove_abandoned(tmp_path)
    assert hidden(tmp_path) == []


# --- splits audit --store / --out ------------------------------------------------------------------

@pytest.fixture()
def published(tmp_path) -> Path:
    """A copy of glyphs@v1 without its audits."""
    dest = tmp_path / "glyphs" / "v1"
    shutil.copytree(load("glyphs", "v1").path, dest, ignore=shutil.ignore_patterns("audits"))
    return dest


def audit_argv(published: Path, out: Path, *more: str) -> list[str]:
    return ["splits", "audit", str(published), "--pretraining", "lvd142m", "--bootstrap", "0", "--out", str(out),
            *more]


def test_a_stored_audit_is_replaced_only_with_replace(published, tmp_path, capsys):
    stored = published / "audits" / "pretraining-lvd142m.json"
    assert main(audit_argv(published, tmp_path / "out", "--store")) == 0
    record = json.loads(stored.read_text())
    record["draws"] = 200  # as if the stored one had been made with 200 draws
    stored.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(audit_argv(published, tmp_path / "out", "--store")) == 2
    err = capsys.readouterr().err.strip()
    assert f"{stored} already holds a stored audit (200 draws); pass --replace" in err and "\n" not in err
    assert json.loads(stored.read_text())["draws"] == 200
    assert main(audit_argv(published, tmp_path / "out", "--store", "--replace")) == 0
    assert json.loads(stored.read_text())["draws"] == 0
    assert read_split_set(published).digest == load("glyphs", "v1").digest


def test_an_out_holding_the_audit_of_another_split_set_is_refused(published, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["splits", "audit", "cars196@oodml-v1", "--pretraining", "imagenet-1k", "--bootstrap", "0",
                 "--out", str(out)]) == 0
    before = (out / "audit.json").read_text()
    capsys.readouterr()
    assert main(audit_argv(published, out)) == 2  # the same folder for another split set
    err = capsys.readouterr().err.strip()
    assert f"--out {out} holds the audit of cars196@oodml-v1 (" in err and "pass --replace to replace it" in err
    assert "\n" not in err and (out / "audit.json").read_text() == before
    assert main(audit_argv(published, out, "--replace")) == 0
    assert json.loads((out / "audit.json").read_text())["split_set"] == "glyphs@v1"
    assert main(audit_argv(published, out)) == 0  # the same split set again: replaced, as a rerun


def test_two_audits_stored_at_once_one_is_refused_and_a_killed_one_stores_nothing(published, tmp_path):
    argv = audit_argv(published, tmp_path / "out", "--store")
    first = f"from oodml.cli import main; sys.exit(main({argv!r}))"
    with paused(tmp_path, "oodml.splits.audit.audit", first) as running:  # claimed, now measuring
        second = oodml(*audit_argv(published, tmp_path / "other-out", "--store"))
        assert second.returncode == 2
        message = second.stderr.strip()
        assert "\n" not in message and f"pretraining-lvd142m.json is being written by another process (pid " \
            f"{running.pid} " in message and "leave out --store" in message
    assert not (published / "audits" / "pretraining-lvd142m.json").exists()
    assert main(argv) == 0  # the killed run blocks nothing
    assert (published / "audits" / "pretraining-lvd142m.json").exists() and hidden(published / "audits") == []


# --- leaderboard submit ----------------------------------------------------------------------------

def test_an_interrupted_submit_is_no_entry_and_the_next_build_tidies_it(leaderboard_entry, tmp_path, capsys):
    results = leaderboard_entry.parents[4] / "results"
    root = tmp_path / "leaderboard"
    version = root / "submissions" / "glyphs" / "v1"
    shutil.copytree(leaderboard_entry, version / "tiny")
    submit = ["leaderboard", "submit", str(results), "--name", "second", "--root", str(root)]
    code = f"from oodml.cli import main; sys.exit(main({submit!r}))"
    with paused(tmp_path, "oodml.leaderboard.submit.score", code) as running:  # embeddings staged, not scored
        assert main(submit) == 2
        err = capsys.readouterr().err.strip()
        assert f"the entry {version / 'second'} is being written by another process (pid {running.pid} " in err
        assert "choose another --name" in err and "\n" not in err
    assert any(name.startswith(".second.") and name.endswith(".tmp") for name in hidden(version))
    assert iter_entries(root) == [version / "tiny"]
    assert main(["leaderboard", "verify", "--root", str(root)]) == 0
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    assert hidden(version) == [] and "second" not in (root / "README.md").read_text()
    assert main(submit) == 0
    assert iter_entries(root) == [version / "second", version / "tiny"] and hidden(version) == []


def test_an_unreadable_audit_json_in_out_is_not_replaced_unasked(published, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "audit.json").write_text('{"split_set": "glyphs@v1", "split_dig')  # cut short by a full disk
    assert main(audit_argv(published, out)) == 2
    assert f"--out {out} holds an audit.json that is not readable" in capsys.readouterr().err
    assert main(audit_argv(published, out, "--replace")) == 0
    assert json.loads((out / "audit.json").read_text())["split_set"] == "glyphs@v1" and hidden(out) == []
