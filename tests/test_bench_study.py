"""tools/bench_study.py (issue 27, item 3): the study benchmark runs end to end at its smallest size, and every
second of it is counted in exactly one stage."""

import importlib.util
import re
import sys
import time
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_study.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_study", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_study"] = module                 # its dataclass looks its module up while being made
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_study"]


def test_the_full_size_is_cub_200_2011s_and_a_small_one_keeps_enough_for_5_shot_episodes(bench):
    full = bench.StudySize.scaled(1)
    assert (full.classes, full.images, full.width, full.height, full.episodes) == (200, 11_788, 500, 375, 10)
    small = bench.StudySize.scaled(0.001)
    assert small.classes >= 12 and small.images >= 12 * small.classes and small.episodes >= 2
    for scale in (0, -1, 1.5):
        with pytest.raises(SystemExit, match=rf"--scale {scale} must be in \(0, 1\]"):
            bench.StudySize.scaled(scale)


def test_each_second_goes_to_the_innermost_stage_running(bench):
    clock = bench.StageClock()
    clock.reset()
    inner = clock.timed("inner", lambda: time.sleep(0.05))

    def outer():
        time.sleep(0.05)
        inner()

    clock.timed("outer", outer)()
    with pytest.raises(ZeroDivisionError):
        clock.timed("outer", lambda: 1 / 0)()        # a stage that raises is closed all the same
    clock.reset()                                     # and the next step starts from nothing
    assert dict(clock.seconds) == {}
    clock.timed("outer", outer)()
    clock._charge()
    assert clock.seconds["inner"] == pytest.approx(0.05, abs=0.04)
    assert clock.seconds["outer"] == pytest.approx(0.05, abs=0.04)


def test_the_images_are_written_once_as_jpegs_in_class_folders(bench, tmp_path):
    size = bench.StudySize(classes=3, images=7, width=40, height=30, episodes=2)
    assert bench.write_images(tmp_path / "images", size) > 0
    files = sorted(p.relative_to(tmp_path / "images").as_posix() for p in (tmp_path / "images").rglob("*.jpg"))
    assert len(files) == 7 and files[0] == "001.class_001/img_0000.jpg" and files[-1] == "003.class_003/img_0001.jpg"
    assert (tmp_path / "images" / "001.class_001" / "img_0000.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert bench.write_images(tmp_path / "images", size) == 0          # reused
    assert bench.write_images(tmp_path / "images", bench.StudySize(3, 8, 40, 30, 2)) > 0   # another size: anew


@pytest.mark.slow
def test_the_smallest_study_runs_and_prints_every_stage(bench, tmp_path, capsys):
    bench.main(["--scale", "0.001", "--device", "cpu", "--models", "glyph-cnn", "--extractor", "pixels",
                "--adapt-iterations", "2",
                "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert "study: 144 images, 12 classes, 64x48, 2 episodes; device: cpu" in out
    rows = {line.split("  ")[0]: re.findall(r"([\d.]+s|-)(?= |$)", line[16:]) for line in out.splitlines()
            if re.match(r"(model|decode \+ embed|kNN \+ metrics|clustering|adaptation|plots|other|total \(wall\)|"
                        r"process CPU)  ", line)}
    assert set(rows) == {"model", "decode + embed", "kNN + metrics", "clustering", "adaptation", "plots", "other",
                         "total (wall)", "process CPU"}
    assert all(len(cells) == 3 for cells in rows.values())           # make-splits, the evaluation, the total
    for stage in ("decode + embed", "kNN + metrics", "clustering", "adaptation", "plots"):
        assert rows[stage][1] != "-", stage                            # evaluate entered each stage
    rows = {k: [float(c[:-1]) if c != "-" else 0.0 for c in v] for k, v in rows.items()}
    stages = [float(v[-1]) for k, v in rows.items() if k not in ("total (wall)", "process CPU")]
    assert sum(stages) == pytest.approx(float(rows["total (wall)"][-1]), abs=0.1 * len(stages))
    assert (tmp_path / "results-0" / "summary.json").is_file()
