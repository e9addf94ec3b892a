"""Request ids drawn in batches (request_id.RequestIds): every id a well-formed random version-4 UUID,
no repeats across batches, and a reseed (after fork) never hands out an id drawn before it."""

from __future__ import annotations

import uuid

from meshbox.proxy.request_id import BATCH, RequestIds


def test_ids_are_distinct_version_4_uuids_across_batches() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(3 * BATCH + 5)]
    assert len(set(made)) == len(made)
    for rid in made:
        parsed = uuid.UUID(rid.decode())
        assert str(parsed).encode() == rid  # canonical lower-case 8-4-4-4-12 form
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_reseed_drops_the_ids_drawn_before_it() -> None:
    parent = RequestIds()
    parent.new()  # a batch is drawn; the rest of it must not survive a reseed
    child = RequestIds()
    child._bits, child._hex, child._at = parent._bits, parent._hex, parent._at  # as after fork()
    expected_without_reseed = parent.new()
    child.reseed()
    assert child.new() != expected_without_reseed
    assert child._at == 32 * (BATCH - 1)
