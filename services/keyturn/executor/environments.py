"""Which environment the policy decided a command's resource is in, asked of the policy engine.

The executor runs a SQL-family command only on a target of that environment
(``SqlPlugin.environment_refusal``). Its own reading of the resource would be a second rule that
could disagree with the policy's (which adds ``data.keyturn.environments``' patterns to the
service's reading): a resource the policy judged as staging must never run on a production
database because the executor read it otherwise. So it asks the policy's own rule, with the
input the policy service sends (``core.environments.environment_input``), and keeps the answer a
while: it depends on the resource and the policy's data alone.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from keyturn.core.environments import ENVIRONMENT_PATH, ENVIRONMENTS, environment_input
from keyturn.faults import Unavailable
from keyturn.policy.opa import PolicyAnswerInvalid, PolicyUnavailable


class PolicyEnvironments:
    """``await environments(resource)`` → production, staging, development or unknown, as decided."""

    def __init__(self, opa: Any, *, kept: int = 4096, fresh_s: float = 30.0, clock=time.monotonic) -> None:
        self.opa = opa
        self.kept, self.fresh_s, self.clock = kept, fresh_s, clock
        self._answers: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def __call__(self, resource: str) -> str:
        now = self.clock()
        known = self._answers.get(resource)
        if known is not None and now - known[0] < self.fresh_s:
            return known[1]
        try:
            answer = (await self.opa.query(ENVIRONMENT_PATH, environment_input(resource))).result
        except PolicyUnavailable as exc:  # waited out: nothing runs until the policy can say where
            raise Unavailable(f"the policy engine cannot say which environment {resource!r} is in: {exc}") from exc
        except PolicyAnswerInvalid:
            answer = "unknown"  # decided as production is, so only a production target runs it
        environment = answer if answer in ENVIRONMENTS else "unknown"
        self._answers[resource] = (now, environment)
        self._answers.move_to_end(resource)
        while len(self._answers) > self.kept:
            self._answers.popitem(last=False)
        return environment
