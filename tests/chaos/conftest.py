"""The fault drills run on a stack of their own and take minutes: `make chaos` (long) and
`make chaos-short` run them. They are not part of `make test` while the short drill still finds
actions left without a terminal state after a broker restart (see tests/chaos/README.md)."""

import os

collect_ignore_glob = [] if os.environ.get("KEYTURN_CHAOS") else ["test_*.py"]
