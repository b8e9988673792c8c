"""What the commands print: records are shown, never obeyed (``keyturn.terminal``)."""

from __future__ import annotations

import io

from rich.table import Table

from keyturn.core.text import for_terminal, steering_problem
from keyturn.terminal import TerminalConsole

HOSTILE = "weekly report\x1b[2J\x1b[H\x1b]0;pwned\x07 \u202eevil\u202c\r\nnext line"


def printed(*renderables, markup: bool = False) -> str:
    out = io.StringIO()
    console = TerminalConsole(file=out, force_terminal=True, color_system="standard", width=200)
    for renderable in renderables:
        console.print(renderable, markup=markup, highlight=False)
    return out.getvalue()


def test_an_escape_sequence_in_a_record_is_written_out_not_obeyed() -> None:
    text = printed(f"reason: {HOSTILE}")
    assert "\x1b[2J" not in text and "\x1b]0;" not in text and "\u202e" not in text and "\x07" not in text
    assert "\\x1b[2J\\x1b[H" in text and "\\u202eevil\\u202c" in text
    assert "next line" in text.splitlines()[1], "a line break stays a line break"


def test_tables_are_shown_the_same_way_and_the_consoles_own_styles_still_apply() -> None:
    table = Table("who", "what")
    table.add_row("human:carol", HOSTILE)
    text = printed(table, "[bold red]refused[/bold red]", markup=True)
    assert "\x1b[2J" not in text and "\\x1b[2J" in text
    assert "\x1b[1;31mrefused" in text, "styles the console adds itself are still written as codes"


def test_plain_text_passes_unchanged() -> None:
    assert for_terminal("human:carol approved\tall fine\n") == "human:carol approved\tall fine\n"
    assert steering_problem("two lines\n\tindented") is None and steering_problem("\x1b[8m") is not None
