"""How a chat account becomes a Keyturn principal: one rule for every chat channel, without I/O.

Each adapter reads what its chat system says about the person who answered (Slack's
``users.info``, the Teams conversation's member record) into a ``ChatAccount``; ``principal_for``
then applies the same rule everywhere:

1. An account that is a guest, external (another workspace or tenant), a bot or deactivated
   never approves — not even when the user map names it.
2. Otherwise the explicit user map (chat user id → principal) decides.
3. Otherwise the account's full email, when it is exactly one plain ``local@domain`` address (nothing
   stripped or repaired first) and its domain is one of the configured domains: the
   first domain is the organisation's own and maps ``carol@<first>`` to ``human:carol``; any
   other listed domain keeps the domain, ``carol@<other>`` → ``human:carol@<other>``. So two
   accounts from different domains never become the same principal, and with no domains
   configured only the map counts.

Anything else is refused (``UnknownChatUser``), and the refusal is recorded under the chat
account's own id (``ChatAccount.record_id``), never under a principal it does not own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keyturn.approval.channels import UnknownChatUser
from keyturn.core.principal import Principal, PrincipalKind

_LOCAL_PART = r"[a-z0-9][a-z0-9._+'-]{0,63}"
_DOMAIN = r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)+"
# One plain address and nothing else: no surrounding or inner space, no second address, no display
# name. ASCII only, letters in either case: without re.ASCII, IGNORECASE lets [a-z] match the Kelvin
# sign (U+212A) and the long s (U+017F), which lower-case to letters of another address.
PLAIN_ADDRESS = re.compile(rf"({_LOCAL_PART})@({_DOMAIN})", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class ChatAccount:
    """What a chat system says about the person behind an answer."""

    record_id: str  # e.g. slack:T0ORG/U0CAROL or teams:<aad object id>: whom a refusal is recorded under
    keys: tuple[str, ...]  # the ids the channel's user map may be keyed by
    email: str | None
    barred: str | None = None  # why this account never approves (guest, external, bot, deactivated), else None


def email_domains(text: str) -> tuple[str, ...]:
    """A comma list of domains, lower-cased, in order (the first is the organisation's own)."""
    return tuple(dict.fromkeys(d.strip().lower() for d in text.split(",") if d.strip()))


def principal_by_email(email: str, domains: tuple[str, ...]) -> str | None:
    """The principal id a full email maps to under ``domains``, or None when it maps to none.

    Only a string that is exactly one plain ``local@domain`` address maps: nothing is stripped or
    repaired first (``" carol@example.com "`` maps to nobody), since what a chat system hands over
    in any other shape is not the address it verified."""
    address = PLAIN_ADDRESS.fullmatch(email)
    if address is None or not domains:
        return None
    local, domain = address.group(1).lower(), address.group(2).lower()
    if domain == domains[0]:
        return f"human:{local}"
    if domain in domains[1:]:
        return f"human:{local}@{domain}"
    return None


def principal_for(
    account: ChatAccount,
    user_map: Mapping[str, str],
    domains: tuple[str, ...],
    *,
    map_setting: str,
    domains_setting: str,
) -> Principal:
    """The principal ``account`` answers as, or ``UnknownChatUser`` saying why it answers as none."""
    if account.barred:
        raise UnknownChatUser(
            f"{account.record_id} {account.barred}; such accounts never approve, whatever their email or mapping",
            account=account.record_id,
        )
    for key in account.keys:
        if key and key in user_map:
            return Principal(user_map[key], Principal.kind_of(user_map[key]))
    if not domains:
        raise UnknownChatUser(
            f"{account.record_id} is not in {map_setting}, and {domains_setting} is empty, so no email maps to a "
            f"principal",
            account=account.record_id,
        )
    if not account.email:
        raise UnknownChatUser(
            f"{account.record_id} has no email Keyturn can see and is not in {map_setting}", account=account.record_id
        )
    principal = principal_by_email(account.email, domains)
    if principal is None:
        raise UnknownChatUser(
            f"{account.record_id}'s email {account.email} is not an address in {', '.join(domains)} "
            f"({domains_setting}) and the account is not in {map_setting}",
            account=account.record_id,
        )
    return Principal(principal, PrincipalKind.HUMAN)


def slack_account(
    user: Mapping[str, Any], workspace: str, *, clicked_as_teams: tuple[str | None, ...] = ()
) -> ChatAccount:
    """A Slack ``users.info`` user, as seen from ``workspace`` (the team id ``auth.test`` names).

    ``clicked_as_teams`` are the teams the interaction payload names (the user's ``team_id`` and
    the payload's ``team.id``), each checked as well: a click from another workspace is not one of
    ours even when ``users.info`` knows the user id."""
    user_id, team = str(user.get("id") or "?"), str(user.get("team_id") or "")
    foreign = next((t for t in (team, *clicked_as_teams) if t and t != workspace), None)
    barred = None
    if user.get("deleted"):
        barred = "is deactivated"
    elif user.get("is_bot") or user_id == "USLACKBOT":
        barred = "is a bot"
    elif user.get("is_ultra_restricted"):
        barred = "is a single-channel guest"
    elif user.get("is_restricted"):
        barred = "is a guest"
    elif user.get("is_stranger"):
        barred = "is an external account (Slack Connect)"
    elif not team or foreign is not None:
        barred = f"belongs to another workspace ({foreign or 'unknown'}), an external account"
    email = (user.get("profile") or {}).get("email")
    return ChatAccount(f"slack:{team or foreign or '?'}/{user_id}", (user_id,), str(email) if email else None, barred)


def teams_account(user_id: str, aad_object_id: str | None, member: Mapping[str, Any], tenant: str) -> ChatAccount:
    """A Teams conversation member record (``userRole``, ``tenantId``, ``userPrincipalName``,
    ``email``), for the user who sent the activity, as seen from the configured ``tenant``.

    The member record, fetched from the connector for ``user_id``, is the account: the
    ``aadObjectId`` an activity carries is the sender's own word, so one that differs from the
    record's bars the click rather than choosing whose entry in the user map it is read by."""
    aad = str(member.get("aadObjectId") or "") or None
    claimed = aad_object_id or None
    upn, email = str(member.get("userPrincipalName") or ""), str(member.get("email") or "")
    role = str(member.get("userRole") or "").lower()
    member_tenant = str(member.get("tenantId") or "")
    barred = None
    if claimed is not None and claimed != aad:
        barred = "sent an account id that its member record does not hold"
    elif user_id.startswith("28:"):
        barred = "is a bot"
    elif role in ("guest", "anonymous"):
        barred = f"is a {role} in the conversation"
    elif "#ext#" in upn.lower() or "#ext#" in email.lower():
        barred = "is an external (guest) account of the tenant"
    elif member_tenant != tenant:
        barred = f"belongs to another tenant ({member_tenant or 'not stated'}), not {tenant}"
    record = f"teams:{aad or user_id}"
    return ChatAccount(record, tuple(k for k in (aad, user_id) if k), email or upn or None, barred)
