"""How chat accounts become principals (keyturn.approval.identities): pure rules, no I/O."""

from __future__ import annotations

import pytest

from keyturn.approval.channels import UnknownChatUser
from keyturn.approval.identities import (
    ChatAccount,
    email_domains,
    principal_by_email,
    principal_for,
    slack_account,
    teams_account,
)

DOMAINS = ("example.com", "partner.example")
WORKSPACE = "T0ORG"
TENANT = "tenant-org"


def slack_user(user_id: str = "U0CAROL", email: str | None = "carol@example.com", **flags) -> dict:
    return {
        "id": user_id,
        "team_id": WORKSPACE,
        "deleted": False,
        "is_bot": False,
        "profile": {"email": email} if email else {},
        **flags,
    }


def teams_member(email: str | None = "carol@example.com", **fields) -> dict:
    return {
        "id": "29:carol",
        "aadObjectId": "aad-carol",
        "email": email,
        "userPrincipalName": email,
        "tenantId": TENANT,
        "userRole": "user",
        **fields,
    }


def slack_principal(user: dict, user_map: dict | None = None, domains=DOMAINS, **kwargs) -> str:
    return principal_for(
        slack_account(user, WORKSPACE, **kwargs),
        user_map or {},
        domains,
        map_setting="KEYTURN_SLACK_USER_MAP",
        domains_setting="KEYTURN_SLACK_EMAIL_DOMAINS",
    ).id


def teams_principal(member: dict, user_map: dict | None = None, domains=DOMAINS, user_id: str = "29:carol") -> str:
    return principal_for(
        teams_account(user_id, member.get("aadObjectId"), member, TENANT),
        user_map or {},
        domains,
        map_setting="KEYTURN_TEAMS_USER_MAP",
        domains_setting="KEYTURN_TEAMS_EMAIL_DOMAINS",
    ).id


# --- the email rule -------------------------------------------------------------------------------


def test_the_first_domain_is_the_organisations_own_and_other_listed_domains_keep_their_name() -> None:
    assert principal_by_email("carol@example.com", DOMAINS) == "human:carol"
    assert principal_by_email("Carol@Example.COM", DOMAINS) == "human:carol"
    assert principal_by_email("carol@partner.example", DOMAINS) == "human:carol@partner.example"


@pytest.mark.parametrize(
    "email",
    [
        "carol@elsewhere.example",  # a domain not in the list
        "carol@example.com.evil.example",  # the own domain as a prefix of another
        "carol@sub.example.com",  # a subdomain is another domain
        "carol",  # no domain at all
        "@example.com",
        "carol_partner.example#ext#@example.com",  # a guest's login name in the own domain
        "human:carol@example.com",
    ],
)
def test_an_email_outside_the_listed_domains_or_not_a_plain_address_maps_to_nobody(email: str) -> None:
    assert principal_by_email(email, DOMAINS) is None


# Not exactly one plain address: nothing is stripped, split or case-folded into one first.
NOT_EXACTLY_AN_ADDRESS = [
    " dave@example.com ",
    " dave@example.com",
    "dave@example.com ",
    "dave@example.com\n",
    "\tdave@example.com",
    "dave@example.com\u00a0",  # a no-break space
    "dave @example.com",
    "dave@example.com, carol@example.com",
    "dave@example.com carol@example.com",
    "Dave <dave@example.com>",
    "<dave@example.com>",
    "dave@@example.com",
    "dave@example.com.",
    "\u212aarol@example.com",  # the Kelvin sign, which lower-cases to k: karol@example.com
    "\u017fam@example.com",  # the long s, which upper-cases to S
]


@pytest.mark.parametrize("email", NOT_EXACTLY_AN_ADDRESS)
def test_an_email_that_is_not_exactly_one_plain_address_maps_to_nobody(email: str) -> None:
    assert principal_by_email(email, DOMAINS) is None


@pytest.mark.parametrize("email", NOT_EXACTLY_AN_ADDRESS[:4])
def test_a_slack_or_teams_email_with_spaces_around_it_makes_nobody_an_approver(email: str) -> None:
    with pytest.raises(UnknownChatUser, match="not an address in"):
        slack_principal(slack_user("U0DAVE", email))
    with pytest.raises(UnknownChatUser, match="not an address in"):
        teams_principal(teams_member(email=email))
    assert slack_principal(slack_user("U0DAVE", "dave@example.com")) == "human:dave"  # the plain one does


def test_with_no_domains_configured_no_email_maps_to_anyone() -> None:
    assert principal_by_email("carol@example.com", ()) is None
    with pytest.raises(UnknownChatUser, match="KEYTURN_SLACK_EMAIL_DOMAINS is empty"):
        slack_principal(slack_user(), domains=())
    assert slack_principal(slack_user(), {"U0CAROL": "human:carol"}, domains=()) == "human:carol", (
        "the explicit map still counts"
    )


def test_the_same_local_part_in_two_domains_never_makes_the_same_principal() -> None:
    own = slack_principal(slack_user("U0CAROL", "carol@example.com"))
    partner = slack_principal(slack_user("U0CAROL2", "carol@partner.example"))
    assert own == "human:carol" and partner == "human:carol@partner.example" and own != partner


def test_the_domain_list_is_read_in_order_and_lower_cased() -> None:
    assert email_domains(" Example.com, partner.example,,example.com ") == ("example.com", "partner.example")
    assert email_domains("") == ()


def test_the_explicit_map_wins_over_the_email() -> None:
    assert slack_principal(slack_user(email="c.smith@example.com"), {"U0CAROL": "human:carol"}) == "human:carol"
    assert teams_principal(teams_member(email="c.smith@example.com"), {"aad-carol": "human:carol"}) == "human:carol"


# --- Slack: who never approves ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, why",
    [
        ({"is_restricted": True}, "is a guest"),
        ({"is_ultra_restricted": True, "is_restricted": True}, "single-channel guest"),
        ({"is_bot": True}, "is a bot"),
        ({"deleted": True}, "deactivated"),
        ({"is_stranger": True}, "external"),
        ({"team_id": "T0PARTNER"}, "another workspace"),
    ],
)
def test_slack_guests_external_accounts_bots_and_deactivated_accounts_never_approve_even_when_mapped(
    flags, why
) -> None:
    user = slack_user(**flags)
    for user_map in ({}, {"U0CAROL": "human:carol"}):
        with pytest.raises(UnknownChatUser, match=why) as refused:
            slack_principal(user, user_map)
        assert "slack:" in str(refused.value) and "human:carol" not in str(refused.value)


def test_a_slack_user_clicking_as_another_team_is_external() -> None:
    """Either team the interaction names (the user's ``team_id``, the payload's ``team.id``) bars
    the click when it is another workspace, and the refusal names that workspace, not ours."""
    for teams in (("T0PARTNER",), (None, "T0PARTNER"), (WORKSPACE, "T0PARTNER"), ("T0PARTNER", WORKSPACE)):
        with pytest.raises(UnknownChatUser, match=r"another workspace \(T0PARTNER\)"):
            slack_principal(slack_user(), clicked_as_teams=teams)
    assert slack_principal(slack_user(), clicked_as_teams=(WORKSPACE, WORKSPACE)) == "human:carol"
    assert slack_principal(slack_user(), clicked_as_teams=(None, None)) == "human:carol"


def test_a_slack_refusal_names_the_chat_account_not_a_principal() -> None:
    account = slack_account(slack_user(is_restricted=True), WORKSPACE)
    assert account.record_id == "slack:T0ORG/U0CAROL"


# --- Teams: who never approves ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, why",
    [
        ({"userRole": "guest"}, "guest"),
        ({"userRole": "Guest", "email": None}, "guest"),
        ({"userPrincipalName": "carol_partner.example#EXT#@example.com"}, "external"),
        ({"tenantId": "tenant-partner"}, "another tenant"),
        ({"tenantId": None}, "another tenant"),
    ],
)
def test_teams_guests_and_accounts_of_other_tenants_never_approve_even_when_mapped(fields, why) -> None:
    member = teams_member(**fields)
    for user_map in ({}, {"aad-carol": "human:carol"}):
        with pytest.raises(UnknownChatUser, match=why) as refused:
            teams_principal(member, user_map)
        assert "teams:aad-carol" in str(refused.value)


def test_a_teams_guest_whose_email_local_part_is_an_approvers_is_refused() -> None:
    guest = teams_member(
        email="carol@partner.example", userPrincipalName="carol_partner.example#EXT#@example.com", userRole="guest"
    )
    with pytest.raises(UnknownChatUser, match="guest"):
        teams_principal(guest)
    guest_with_own_domain_email = teams_member(
        email="carol@example.com", userPrincipalName="carol_example.com#EXT#@example.com"
    )
    with pytest.raises(UnknownChatUser, match="external"):
        teams_principal(guest_with_own_domain_email)


def test_a_teams_bot_never_approves() -> None:
    with pytest.raises(UnknownChatUser, match="bot"):
        teams_principal(teams_member(), user_id="28:another-bot")


def test_a_full_teams_member_from_a_domain_not_listed_is_refused_and_one_from_a_listed_domain_keeps_it() -> None:
    with pytest.raises(UnknownChatUser, match="not an address in"):
        teams_principal(teams_member(email="carol@elsewhere.example"))
    assert teams_principal(teams_member(email="carol@partner.example")) == "human:carol@partner.example"
    assert teams_principal(teams_member(email=None, userPrincipalName="carol@example.com")) == "human:carol", (
        "the UPN when no email"
    )


def test_an_account_with_nothing_to_map_by_is_refused() -> None:
    with pytest.raises(UnknownChatUser, match="no email"):
        principal_for(ChatAccount("slack:T0ORG/U0X", ("U0X",), None), {}, DOMAINS, map_setting="M", domains_setting="D")


def test_a_teams_click_naming_another_account_than_its_member_record_is_refused() -> None:
    # mallory's own record has no email and no entry in the map; her activity claims dave's id
    mallory = teams_member(email=None, userPrincipalName=None, aadObjectId="aad-mallory")
    user_map = {"aad-dave": "human:dave"}
    account = teams_account("29:mallory", "aad-dave", mallory, TENANT)
    with pytest.raises(UnknownChatUser) as refused:
        principal_for(account, user_map, DOMAINS, map_setting="M", domains_setting="D")
    assert "member record" in str(refused.value)
    assert account.record_id == "teams:aad-mallory"  # recorded as who the connector says sent it
    # the same click carrying her own id is judged by her record: not mapped, refused as such
    assert teams_account("29:mallory", "aad-mallory", mallory, TENANT).record_id == "teams:aad-mallory"
    # dave's own click, with his id or none at all, is dave's
    dave = teams_member(email=None, userPrincipalName=None, aadObjectId="aad-dave")
    for claimed in ("aad-dave", None):
        assert (
            principal_for(
                teams_account("29:dave", claimed, dave, TENANT), user_map, DOMAINS, map_setting="M", domains_setting="D"
            ).id
            == "human:dave"
        )
