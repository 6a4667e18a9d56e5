"""The NATS JetStream backend (``nats://host:port[,host:port...]``), on nats-py.

How the broker's terms map onto JetStream:

    topic         a stream, ``<prefix>_<topic>``, of one subject ``<prefix>.t.<topic>``, with
                  limits retention, ``max_msgs`` = ``max_backlog`` and ``DiscardPolicy.NEW``: a
                  full stream refuses, nothing is evicted. mqctl drops acknowledged history itself
                  (``_make_room``): what every group has acknowledged beyond the newest
                  ``retention`` messages, never what a group still needs; a publish that finds the
                  stream full drops all acknowledged history to make room, then counts the backlog
                  and refuses (``QueueFull``) only if that is over ``max_backlog``
    group         a durable pull consumer: ``ack_wait`` is the ack timeout, redelivery after it is
                  the server's, ``num_delivered`` is the attempt; ``nack(delay)`` is ``NAK`` with a
                  delay; every ack, nack and term is a request the server answers once done
    dead letters  a second stream, ``<prefix>_<topic>_dead``, with the reason, group, attempts and
                  original id in headers; ``max_deliver`` is ``max_attempts + 1``: the delivery past
                  the last attempt is moved there by the client (the server alone would stop
                  delivering it and keep it, neither delivered nor dead: a silent loss)
    idempotency   ``Nats-Msg-Id`` within the stream's duplicate window (``idempotency_window_s``)
    publish_many  an atomic batch (nats-server 2.12 or newer: ``allow_atomic``): all or none
    broadcast     an ordered consumer from a stream sequence; a position is that sequence
    ids           stream sequences, as decimal strings

Not interest retention, though it would count the backlog on the server: on a cluster, a
message published while a consumer was still being set up on the stream's leader was dropped
as nobody's (seen in tests/cluster/test_nats_cluster.py). Names are escaped for JetStream
(``.`` and ``_`` become ``_2E`` and ``_5F``). Topics have one partition.

The package, each module one piece, composed by ``backend.py``:

    connection.py    the connection, names, errors
    streams.py       a topic's stream and its groups' consumers, set up and trimmed
    publishing.py    Backend.add: singles at once, batches atomically
    readers.py       a group's pull consumer, a broadcast's ordered consumer
    dead_letters.py  the dead letters' stream
    backend.py       NatsBackend and from_url
"""

from mqctl.backends.nats.backend import NatsBackend, from_url

__all__ = ["NatsBackend", "from_url"]
