"""One metrics table (oodml.metrics.METRICS): what retrieval_metrics reports, what evaluate offers to plot,
what the leaderboard re-scores and what the protocol card defines are all read from it."""

import numpy as np
import pytest

from oodml import OodmlError
from oodml.evaluation import zero_shot_metrics
from oodml.leaderboard.verify import RETRIEVAL
from oodml.metrics import MAP_DEPTH, METRICS, metric, metric_names, retrieval_metrics
from oodml.protocol import METRIC_DEFINITIONS, clustering_rule


def test_every_metric_states_its_direction_needs_and_definition():
    assert len({m.name for m in METRICS}) == len(METRICS)
    for entry in METRICS:
        assert entry.direction in ("higher", "lower") and entry.needs in ("knn", "clustering")
        assert entry.definition and "\n" not in entry.definition


@pytest.mark.parametrize(("ks", "map_depth", "clustering"), [((1, 2, 4, 8), MAP_DEPTH, True), ((1, 3), None, False),
                                                             ((5,), 7, True)])
def test_retrieval_metrics_reports_exactly_the_tables_names_in_its_order(ks, map_depth, clustering):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 4)).astype(np.float32), np.repeat(np.arange(6), 4)
    reported = retrieval_metrics(x, y, ks=ks, map_depth=map_depth, clustering=clustering)
    assert [k for k in reported if k != "queries"] == metric_names(ks, map_depth=map_depth, clustering=clustering)


def test_evaluate_and_the_leaderboard_read_the_table():
    assert zero_shot_metrics() == metric_names() == ["recall@1", "recall@2", "recall@4", "recall@8", "r_precision",
                                                      "map@r", f"map@{MAP_DEPTH}", "nmi", "ami"]
    assert zero_shot_metrics((1,), clustering=False) == ["recall@1", "r_precision", "map@r", f"map@{MAP_DEPTH}"]
    # the board's columns: unchanged, so the committed board rebuilds byte for byte
    assert RETRIEVAL == ("recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r")
    assert all(metric(name).needs == "knn" for name in RETRIEVAL)


def test_the_protocol_card_defines_the_metrics_in_the_tables_words():
    for entry in METRICS:
        where = METRIC_DEFINITIONS if entry.needs == "knn" else clustering_rule(True)
        assert where[entry.name] == entry.definition
    assert list(METRIC_DEFINITIONS) == ["recall@k", "r_precision", "map@r", f"map@{MAP_DEPTH}", "accuracy"]


def test_a_reported_name_finds_its_entry_and_an_unknown_one_is_refused():
    assert metric("recall@4").name == "recall@k" and metric("map@500").name == f"map@{MAP_DEPTH}"
    assert metric("map@r").name == "map@r" and metric("ami").needs == "clustering"
    for name in ("recall@", "recall@x", "precision@1", "map@-1"):
        with pytest.raises(OodmlError, match=f"unknown metric {name!r}; the metrics are recall@k, r_precision"):
            metric(name)
