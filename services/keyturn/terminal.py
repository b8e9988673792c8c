"""The consoles every ``keyturn`` command writes through: what records hold is shown, never obeyed.

A request's reason, a principal, a resource: agents and people choose them, and the commands
print them (``keyturn approvals show`` before a vote, ``keyturn audit replay``). Written raw, an
escape sequence in one clears the screen, moves the cursor or hides what follows, and a
direction override shows a line in another order, so an approver would read what the agent
wrote instead of what it asks. ``TerminalConsole`` writes every such character out as an escape
(``core.text.for_terminal``) in whatever it renders (text, tables, markup), and leaves alone the
codes it adds itself (styles, colours, cursor control).
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.segment import Segment

from keyturn.core.text import for_terminal


class TerminalConsole(Console):
    """A rich console that shows the text it renders, never obeys it."""

    # ``_render_buffer`` is where rich turns segments into what is written; overriding it reaches
    # every renderable in one place. rich is pinned (pyproject), so the name is checked by the tests.
    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment if segment.control else Segment(for_terminal(segment.text), segment.style, segment.control)
            for segment in buffer
        )
