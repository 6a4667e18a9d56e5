"""Every Redis key mqctl uses, built in one place.

All keys of one topic share the hash tag ``{topic}``, so they live on one Redis Cluster
slot and every multi-key script (capacity check + add, idempotency + add, dead-lettering)
stays atomic there. Topic names may not contain braces (``check_name`` refuses them).

    <prefix>:topics                  set of topic names (not slot-bound; written once per topic)
    <prefix>:probe                   written by a check that Redis takes writes (expires in 1 s)
    <prefix>:{<topic>}:stream        the topic's stream; its consumer groups are the groups
    <prefix>:{<topic>}:dead          dead letters (a stream of {id, m, group, reason, attempts})
    <prefix>:{<topic>}:created       set on the topic's first publish (creates the default group)
    <prefix>:{<topic>}:idem:<key>    the id stored under an idempotency key, with a TTL
    <prefix>:{<topic>}:meta          the topic's settings (a hash: ``partitions``)

A partition ``p > 0`` of a partitioned topic is stored as the internal topic ``<topic>#<p>``
(see ``mqctl.backends.partitioned``), with keys of its own and so a hash tag, and a slot, of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "mqctl"


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str = DEFAULT_PREFIX

    def topics(self) -> str:
        return f"{self.prefix}:topics"

    def probe(self) -> str:
        return f"{self.prefix}:probe"

    def _tagged(self, topic: str) -> str:
        return f"{self.prefix}:{{{topic}}}"

    def stream(self, topic: str) -> str:
        return f"{self._tagged(topic)}:stream"

    def dead(self, topic: str) -> str:
        return f"{self._tagged(topic)}:dead"

    def created(self, topic: str) -> str:
        return f"{self._tagged(topic)}:created"

    def meta(self, topic: str) -> str:
        return f"{self._tagged(topic)}:meta"

    def idempotency(self, topic: str, key: str) -> str:
        return f"{self._tagged(topic)}:idem:{key}"
