"""Node families load one by one: a family that cannot be imported is off, with one log line; the rest load."""
from __future__ import annotations

import logging
import sys

from nodes import registry


def test_every_family_loads_here():
    result = registry.load_families()
    assert not result.off
    assert set(result.classes) == set(registry.NODE_CLASS_MAPPINGS)
    for family in registry.FAMILIES:
        assert set(registry.declared_nodes(family)) <= set(result.classes)


def test_a_family_that_fails_to_import_is_off_and_the_others_still_load(monkeypatch, caplog):
    broken = f"{registry.__package__}.asyrp_train"
    monkeypatch.delitem(sys.modules, broken, raising=False)
    monkeypatch.setitem(sys.modules, broken, None)  # makes the import raise ModuleNotFoundError, as a missing dependency does
    with caplog.at_level(logging.WARNING):
        result = registry.load_families()
    assert result.off == {"asyrp_train": ["HSpaceAsyrpTrain", "HSpaceApplyAsyrpFunction"]}
    assert "HSpaceAsyrpTrain" not in result.classes and "HSpaceAsyrpTrain" not in result.display_names
    assert {"HSpacePCA", "HSpaceApplyDirection", "HSpaceCaptureH", "HSpaceLoadDirection"} <= set(result.classes)
    lines = [record.getMessage() for record in caplog.records if record.name == registry.__name__]
    assert len(lines) == 1 and "HSpaceAsyrpTrain" in lines[0] and "asyrp_train" in lines[0]
    assert "\n" not in lines[0]
