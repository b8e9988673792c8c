"""Kafka: topics, the codec, publishing and the one consumption loop.

Importing the package corrects three ways an aiokafka client stops for good across a broker
restart: a client that lost every broker it knew connects to its configured servers again
(``bus.rebootstrap``), a transactional producer keeps looking for its coordinator
(``bus.coordinator_lookup``), and a producer whose sender task stopped starts it again
(``bus.sender_revival``).
"""

from keyturn.bus import coordinator_lookup, rebootstrap, sender_revival

rebootstrap.install()
coordinator_lookup.install()
sender_revival.install()
