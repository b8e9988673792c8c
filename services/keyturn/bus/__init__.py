"""Kafka: topics, the codec, publishing and the one consumption loop.

Importing the package gives every Kafka client of the process a rebootstrap (``bus.rebootstrap``):
a client that lost every broker it knew connects to its configured servers again.
"""

from keyturn.bus.rebootstrap import install

install()
