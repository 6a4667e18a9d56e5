"""Partition policy, pure functions: stream names and their slots, key hashing, ids and broadcast cursors."""

from __future__ import annotations

import binascii

import pytest

import mqctl
from mqctl.backends.partitioned import (
    advance,
    check_partitions,
    format_cursor,
    parse_cursor,
    pick,
    split_id,
    stream_name,
)


def _slot(name: str) -> int:
    return binascii.crc_hqx(name.encode(), 0) % 16384


def test_partition_zero_is_the_topic_itself() -> None:
    """Partition 0 keeps the topic's own name: a 1-partition topic is the unpartitioned layout."""
    assert stream_name("orders", 0, 1) == "orders"
    assert stream_name("orders", 0, 6) == "orders"


@pytest.mark.parametrize("topic", ["orders", "a", "events.v2", "x" * 200])
@pytest.mark.parametrize("partitions", [2, 3, 6, 16])
def test_partition_slots_lie_evenly_around_the_ring(topic: str, partitions: int) -> None:
    """Partition p's slot is within 64 slots after slot(topic) + p * 16384 / N, so N partitions spread
    over the masters of a cluster whose masters hold even slot ranges."""
    base = _slot(topic)
    for p in range(1, partitions):
        name = stream_name(topic, p, partitions)
        assert name.startswith(f"{topic}#{p}")
        assert (_slot(name) - (base + p * 16384 // partitions)) % 16384 < 64


def test_a_key_always_picks_the_same_partition() -> None:
    """pick() is a stable hash (crc32), the same in every process, spread over the partitions."""
    assert pick("customer-7", 6) == pick("customer-7", 6)
    assert {pick(f"k{i}", 6) for i in range(100)} == set(range(6))


def test_ids_name_their_partition() -> None:
    """'p:ms-seq' splits into (p, 'ms-seq'); a plain id is partition 0's; garbage is a ConfigError."""
    assert split_id("3:1700000000000-5") == (3, "1700000000000-5")
    assert split_id("1700000000000-5") == (0, "1700000000000-5")
    with pytest.raises(mqctl.ConfigError):
        split_id("x:1-1")


def test_a_cursor_names_every_partition() -> None:
    """A full cursor round-trips; a plain id or 0-0 applies to every partition."""
    assert parse_cursor("0:5-0,1:7-1,2:6-0", 3) == ["5-0", "7-1", "6-0"]
    assert format_cursor(["5-0", "7-1"]) == "0:5-0,1:7-1"
    assert parse_cursor("0-0", 3) == ["0-0"] * 3
    assert parse_cursor("1700-0", 2) == ["1700-0", "1700-0"]


def test_a_partition_left_out_resumes_from_the_oldest_time_named() -> None:
    """A cursor without partition 2 resumes it from just before the oldest millisecond named: a repeat, no gap."""
    assert parse_cursor("0:1700-3,1:1800-0", 3)[2] == "1699-18446744073709551615"


def test_a_cursor_for_a_partition_the_topic_does_not_have_is_refused() -> None:
    """Naming partition 5 of a 3-partition topic is a ConfigError."""
    with pytest.raises(mqctl.ConfigError, match="only 3 partitions"):
        parse_cursor("5:1-0", 3)


def test_advance_moves_only_the_partition_read() -> None:
    """advance() replaces one partition's id in the cursor; a plain id simply becomes the position."""
    assert advance("0:1-0,1:2-0", "1:9-0") == "0:1-0,1:9-0"
    assert advance("1-0", "2-0") == "2-0"


@pytest.mark.parametrize("bad", [0, 257, -1, 2.0, True, "3"])
def test_partition_counts_are_checked(bad: object) -> None:
    """Only whole numbers from 1 to 256 are partition counts."""
    with pytest.raises(mqctl.ConfigError):
        check_partitions(bad)
