"""The C-STORE size guard on P-DATA fragments (the real association is in
tests/integration/test_receiver.py)."""

from __future__ import annotations

from types import SimpleNamespace

from secondreader.dicom.scp import _DatasetSizeGuard, _handle_store
from secondreader.dicom.status import OUT_OF_RESOURCES

COMMAND, LAST = 0x01, 0x02


class _Assoc:
    def __init__(self) -> None:
        self.aborts = 0

    def abort(self, block: bool = True) -> None:
        assert block is False  # inside an event handler pynetdicom must not wait for itself
        self.aborts += 1


def _pdu(assoc: _Assoc, *fragments: tuple[int, int]) -> SimpleNamespace:
    items = [SimpleNamespace(presentation_data_value=bytes([header]) + b"x" * size) for header, size in fragments]
    return SimpleNamespace(assoc=assoc, pdu=SimpleNamespace(presentation_data_value_items=items))


def test_each_data_set_is_counted_on_its_own() -> None:
    guard, assoc = _DatasetSizeGuard(100), _Assoc()
    for _ in range(5):  # five 90-byte data sets on one association: 450 bytes in all
        guard(_pdu(assoc, (COMMAND | LAST, 60), (0, 50)))
        guard(_pdu(assoc, (LAST, 40)))
    assert assoc.aborts == 0 and not guard.refused(assoc)


def test_a_data_set_over_the_limit_aborts_once_and_is_refused() -> None:
    guard, assoc = _DatasetSizeGuard(100), _Assoc()
    guard(_pdu(assoc, (COMMAND | LAST, 60), (0, 60)))
    guard(_pdu(assoc, (LAST, 60)))  # the last fragment crosses: the data set reached pynetdicom whole
    guard(_pdu(assoc, (0, 60)))  # still in flight after the abort
    assert assoc.aborts == 1 and guard.refused(assoc)
    stored: list[bytes] = []
    event = SimpleNamespace(assoc=assoc)
    assert _handle_store(event, lambda data, ds, ae: bool(stored.append(data)), None, guard) == OUT_OF_RESOURCES
    assert stored == []


def test_command_fragments_that_never_end_are_counted_too() -> None:
    guard, assoc = _DatasetSizeGuard(100), _Assoc()
    for _ in range(3):
        guard(_pdu(assoc, (COMMAND, 40)))
    assert assoc.aborts == 1


def test_an_empty_fragment_does_not_switch_the_guard_off() -> None:
    guard, assoc = _DatasetSizeGuard(100), _Assoc()
    guard(_pdu(assoc, (COMMAND | LAST, 60)))
    guard(_pdu(assoc, (LAST, 0)))
    guard(SimpleNamespace(assoc=assoc, pdu=SimpleNamespace(presentation_data_value_items=[
        SimpleNamespace(presentation_data_value=b"")])))
    guard(_pdu(assoc, (0, 80), (0, 80)))
    assert assoc.aborts == 1
