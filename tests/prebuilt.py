"""What every service builds as it starts and no setting changes, built once in the fork server
the tests fork their services from (``tests.processes.PRELOADED``); each fork inherits it.

- The masker (``keyturn.masking.protect.shared_masker``): its analyser and warm-up are ~0.7 of
  the ~1.5 CPU-seconds a forked service spent starting, and a test run starts ~140 services.
- The map from file to module that ``inspect.getmodule`` builds on its first miss: faust
  registers every ``app.task``/``agent``/``timer`` through venusian, which asks it, and over the
  ~2,300 modules preloaded here that first miss cost each service ~0.2 CPU-seconds.

Neither holds a thread, a connection or a setting, so a fork starts as clean as before. The
bench (which starts services as a deployment does, a fresh interpreter each) builds both in
each process, as production does.
"""

import inspect
import sys

from keyturn.masking.protect import shared_masker

shared_masker()
inspect.getmodule(sys._getframe())  # a frame names no module: inspect maps every loaded file
