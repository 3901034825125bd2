"""The one registry every named thing goes through: the same unknown-name error, listing and overwrite rule."""

import pytest

from oodml import OodmlError
from oodml.augmentations import AUGMENTATIONS
from oodml.datasets.registry import DATASETS
from oodml.losses import LOSSES
from oodml.registry import Registry
from oodml.shift import DISTANCES
from oodml.splits import ALGORITHMS


def test_a_registry_lists_suggests_and_warns_on_overwrite():
    colours = Registry("colour")

    @colours.register("crimson")
    def crimson():
        """A deep red."""

    colours.register("cyan", lambda: None, description="green-blue")
    assert list(colours) == ["crimson", "cyan"] and "cyan" in colours and len(colours) == 2
    assert ["cyan"] not in colours and None not in colours     # what a hostile document may hold
    assert colours.listing() == [("crimson", "A deep red."), ("cyan", "green-blue")]
    assert colours.names("c?an") == ["cyan"]
    with pytest.raises(OodmlError, match=r"^unknown colour 'crimsen'; did you mean crimson\?$"):
        colours["crimsen"]
    with pytest.raises(OodmlError, match=r"^unknown colour 'blue'; choose one of crimson, cyan$"):
        colours["blue"]
    with pytest.warns(UserWarning, match="colour 'cyan' was already registered; replacing it"):
        colours.register("cyan", lambda: 1)


@pytest.mark.parametrize("registry, kind, close", [
    (LOSSES, "loss", "multi-similarity"), (DISTANCES, "distance", "sinkhorn"),
    (AUGMENTATIONS, "augmentation", "glyph-affine"), (ALGORITHMS, "algorithm", "greedy"),
    (DATASETS, "dataset", "glyphs"),
])
def test_every_named_family_gives_the_same_error_and_a_described_listing(registry, kind, close):
    misspelt = close[:-1] + "x"
    with pytest.raises(OodmlError, match=rf"^unknown {kind} '{misspelt}'; did you mean {close}\b"):
        registry[misspelt]
    assert all(description for _, description in registry.listing())


def test_a_plugin_registers_through_its_entry_point(monkeypatch):
    from importlib.metadata import EntryPoint

    import oodml.registry

    shapes = Registry("shape", entry_points="oodml.shapes")
    plugin = EntryPoint("hexagon", "tests.plugin:hexagon", "oodml.shapes")
    broken = EntryPoint("broken", "no_such_module:thing", "oodml.shapes")
    monkeypatch.setattr(oodml.registry, "entry_points", lambda group: [plugin, broken] if group == "oodml.shapes"
                        else [])
    monkeypatch.setattr(EntryPoint, "load", lambda ep: (lambda: "hexagon") if ep.name == "hexagon"
                        else __import__(ep.module))
    with pytest.warns(UserWarning, match="could not load shape entry point 'broken'"):
        assert shapes.names() == ["hexagon"]
    assert shapes["hexagon"]() == "hexagon"
