"""A Kafka client that lost every broker it knew bootstraps again (``bus.rebootstrap``).

The state comes from a metadata answer that named no broker (a broker shutting down answers
so): the client keeps only its bootstrap connection, and once that closes it has no node to
ask. aiokafka alone then logs "Unable to update metadata from []" for as long as the client
lives; a short drill's executor stopped for good so (267 orders never ran)."""

from __future__ import annotations

from aiokafka.client import AIOKafkaClient

import keyturn.bus  # noqa: F401  (installs the rebootstrap, as every service's imports do)


async def test_a_client_that_knows_no_broker_bootstraps_again(settings) -> None:
    client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap)
    await client.bootstrap()
    try:
        assert client.cluster.brokers()
        # what the broker's empty answer and the closed bootstrap connection leave behind
        for conn in list(client._conns.values()):
            conn.close()
        client._conns.clear()
        client.cluster._brokers = {}
        assert not client.cluster.brokers()

        assert await client._metadata_update(client.cluster, []) is True
        assert client.cluster.brokers(), "the client learnt the brokers again from its configured servers"
        assert all(isinstance(broker.nodeId, int) for broker in client.cluster.brokers()), "real brokers, by id"
    finally:
        await client.close()


async def test_while_the_servers_are_away_the_update_fails_and_is_tried_again(settings) -> None:
    client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap)
    await client.bootstrap()
    try:
        for conn in list(client._conns.values()):
            conn.close()
        client._conns.clear()
        client.cluster._brokers = {}
        client._bootstrap_servers = "127.0.0.1:9"  # nothing listens there: the servers are away
        assert await client._metadata_update(client.cluster, []) is False
        client._bootstrap_servers = settings.kafka_bootstrap  # back
        assert await client._metadata_update(client.cluster, []) is True
        assert client.cluster.brokers()
    finally:
        await client.close()
