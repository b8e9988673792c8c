"""A SQL-family command whose target is away before it changed anything (a restart) waits for it:
its reads, the minting of its role, the login as that role; and what a break left is read back.

``SqlPlugin.before_any_change`` runs a command's reads and the minting of its role again while
the target cannot be reached or the connection breaks, for up to ``settle_s``; the long fault
drill's grants that met the database restart there ended ``failed`` before. Anything else fails
at once, and a target that stays away fails the command with nothing changed."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import psycopg
import pytest

from keyturn.executor.plugins import sql as sql_plugin
from keyturn.executor.plugins.base import ExecutionFailed, OutcomeUnknown
from keyturn.executor.plugins.sql import SqlPlugin, TargetAway
from keyturn.executor.plugins.sql_roles import Grants, TemporaryRole, role_name_for


def plugin(settle_s: float = 5.0) -> SqlPlugin:
    made = SqlPlugin("postgresql://keyturn@127.0.0.1:1/keyturn")
    made.settle_s, made.settle_every_s = settle_s, 0.01
    return made


class Flaky:
    """A command's preparation that meets ``failures`` first, then succeeds."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "role minted"


async def test_a_target_that_refuses_then_answers_is_waited_for() -> None:
    prepare = Flaky(TargetAway("cannot connect"), psycopg.OperationalError("server closed the connection"))
    assert await plugin().before_any_change(prepare) == "role minted"
    assert prepare.calls == 3


async def test_a_refusal_that_is_not_the_target_being_away_fails_at_once() -> None:
    prepare = Flaky(ExecutionFailed("table orders does not exist on the target"))
    with pytest.raises(ExecutionFailed, match="does not exist"):
        await plugin().before_any_change(prepare)
    assert prepare.calls == 1


async def test_a_target_that_stays_away_fails_the_command_with_nothing_changed() -> None:
    prepare = Flaky(*[TargetAway("cannot connect to the SQL target db")] * 1000)
    with pytest.raises(ExecutionFailed, match=r"^nothing was changed: cannot connect .* did not answer within 0.1s"):
        await plugin(settle_s=0.1).before_any_change(prepare)
    assert 2 <= prepare.calls < 1000


class Statuses:
    """The target's ``pg_xact_status`` answers, one per reading, through the plugin's admin connection."""

    def __init__(self, *answers: str | None) -> None:
        self.answers = list(answers)
        self.readings = 0

    @contextlib.asynccontextmanager
    async def admin(self, target=None):
        yield self

    async def execute(self, statement: str, params: tuple):
        assert statement == "SELECT pg_xact_status(%s::xid8)" and params == ("5",)
        self.readings += 1
        self.answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]  # the last one stays
        return self

    async def fetchone(self):
        return (self.answer,)


def reading(statuses: Statuses, settle_s: float = 5.0) -> SqlPlugin:
    made = plugin(settle_s)
    made._admin = statuses.admin  # type: ignore[method-assign]
    return made


async def test_a_transaction_still_committing_is_read_again_until_it_has_ended() -> None:
    statuses = Statuses("in progress", "in progress", "committed")
    made = reading(statuses)
    assert await made.transaction_fate("5", made.target) == "committed"
    assert statuses.readings == 3


async def test_a_transaction_the_target_no_longer_knows_or_that_never_ends_stays_unknown() -> None:
    made = reading(Statuses(None))
    with pytest.raises(OutcomeUnknown, match="no longer keeps the status of transaction 5"):
        await made.transaction_fate("5", made.target)
    made = reading(Statuses("in progress"), settle_s=0.1)
    with pytest.raises(
        OutcomeUnknown, match=r"whether transaction 5 committed within 0.1s \(transaction 5 has not ended"
    ):
        await made.transaction_fate("5", made.target)


async def test_a_role_whose_creation_broke_is_made_again_and_one_found_otherwise_is_refused(monkeypatch) -> None:
    """The CREATE ROLE's connection broke (its commit may have gone through): the command's
    preparation is tried again, dropping what the broken attempt may have left; a role found
    there without such an attempt means another run, which is refused."""
    created: list[str] = []
    dropped: list[str] = []
    breaks = [psycopg.OperationalError("server closed the connection unexpectedly")]

    async def create_role(admin, name, ttl_s, grants):
        created.append(name)
        if breaks:
            raise breaks.pop(0)
        return TemporaryRole(name, "pw", datetime.now(UTC))

    async def drop_role(admin, name):
        dropped.append(name)

    monkeypatch.setattr(sql_plugin, "create_role", create_role)
    monkeypatch.setattr(sql_plugin, "drop_role", drop_role)
    made = plugin()
    role = await made.before_any_change(lambda: made._mint(object(), "a1", 60, Grants()))
    name = role_name_for("a1")
    assert role.name == name and created == [name, name] and dropped == [name]
    assert made._broken_mints == {}

    async def exists(admin, name, ttl_s, grants):
        raise psycopg.errors.DuplicateObject("role exists")

    monkeypatch.setattr(sql_plugin, "create_role", exists)
    with pytest.raises(ExecutionFailed, match="another run of it started; refusing to run it twice"):
        await made.before_any_change(lambda: made._mint(object(), "a2", 60, Grants()))
    assert dropped == [name], "nothing dropped: the role is another run's"


async def test_a_broken_mint_of_a_command_that_gave_up_is_forgotten(monkeypatch) -> None:
    """A command whose role's creation broke and whose target then stayed away fails; its
    role's name is kept only as long as a retry of that command could come (twice the wait for
    a target), so a long-running executor does not keep one per such command for ever."""

    async def breaks(admin, name, ttl_s, grants):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    async def drop_role(admin, name):
        return None

    monkeypatch.setattr(sql_plugin, "create_role", breaks)
    monkeypatch.setattr(sql_plugin, "drop_role", drop_role)
    made = plugin(settle_s=0.05)

    async def gives_up(action_id: str) -> None:
        with pytest.raises(ExecutionFailed, match="did not answer within"):
            await made.before_any_change(lambda: made._mint(object(), action_id, 60, Grants()))

    await gives_up("first")
    await gives_up("second")  # within twice the wait of the first: both kept
    assert set(made._broken_mints) == {role_name_for("first"), role_name_for("second")}
    made._broken_mints[role_name_for("first")] -= 0.2  # its command gave up longer ago than that
    await gives_up("third")
    assert set(made._broken_mints) == {role_name_for("second"), role_name_for("third")}


@pytest.mark.parametrize(
    "refusal, attempts, outcome",
    [
        ("connection refused", 3, "connected"),
        ('FATAL:  password authentication failed for user "keyturn_cmd_x"', 1, "refused the login"),
    ],
)
async def test_the_login_as_a_commands_role_waits_for_a_restarting_target_but_not_a_refusal(
    monkeypatch, refusal: str, attempts: int, outcome: str
) -> None:
    calls: list[str] = []

    async def connect(url, **options):
        calls.append(options["user"])
        if len(calls) < 3:
            raise psycopg.OperationalError(refusal)
        return "connected"

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", connect)
    try:
        result = await plugin()._connect_as("keyturn_cmd_x", "pw", 5)
    except ExecutionFailed as exc:
        result = "refused the login" if "password authentication failed" in str(exc) else str(exc)
    assert (result, len(calls)) == (outcome, attempts)
