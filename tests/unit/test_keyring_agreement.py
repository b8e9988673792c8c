"""The seal-key check each service makes as it starts (``masking.agreement``), without a database:
what it refuses, what it lets through, and that it names key ids, never keys."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from keyturn.masking.agreement import RecordedKey, RecordedService, check_value, disagreements
from keyturn.masking.sealing import Keyring

AT = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)


def recorded(by: str, ring: Keyring) -> tuple[dict[str, RecordedKey], dict[str, RecordedService]]:
    """What ``by`` starting with ``ring`` leaves in the tables."""
    keys = {kid: RecordedKey(check_value(key), by) for kid, key in ring.keys.items()}
    return keys, {by: RecordedService(ring.current_key_id, frozenset(ring.keys), AT)}


def test_services_sharing_one_ring_agree() -> None:
    ring = Keyring.generate("k1")
    keys, services = recorded("intake", ring)
    assert disagreements("executor", ring, keys, services) == []


def test_the_first_service_to_start_agrees_with_nobody_recorded() -> None:
    assert disagreements("intake", Keyring.generate("k1"), {}, {}) == []


def test_one_key_id_standing_for_two_keys_is_refused_and_named_without_either_key() -> None:
    theirs, mine = Keyring.generate("k1"), Keyring.generate("k1")
    keys, services = recorded("policy", theirs)

    problems = disagreements("executor", mine, keys, services)

    assert problems == [
        "seal key 'k1' is not the key of that id the policy service holds: "
        "a key id must stand for one key in every ring"
    ]
    for key in (*theirs.keys.values(), *mine.keys.values()):
        assert base64.b64encode(key).decode() not in " ".join(problems)
        assert key.hex() not in " ".join(problems)


def test_hosts_that_each_made_a_local_key_are_refused_both_ways() -> None:
    """KEYTURN_SEAL_KEYS left unset on two hosts: each service made a ring of its own (another id)."""
    keys, services = recorded("intake", Keyring.generate("a1"))

    problems = disagreements("executor", Keyring.generate("b2"), keys, services)

    assert len(problems) == 2
    assert "the intake service (started 2026-12-07T22:00:00+00:00) seals and warrants with key 'a1'" in problems[0]
    assert "would seal and warrant with key 'b2', which the ring of the intake service" in problems[1]


def test_a_rotation_passes_when_the_new_key_reaches_every_ring_before_it_is_current() -> None:
    old = Keyring.generate("k1")
    both = Keyring("k1", {**old.keys, "k2": Keyring.generate("k2").keys["k2"]})  # k2 added, k1 still current
    rotated = Keyring("k2", both.keys)  # k2 current
    keys, services = recorded("intake", old)
    for name in ("policy", "executor"):
        more_keys, more = recorded(name, old)
        keys |= more_keys
        services |= more

    for name in ("intake", "policy", "executor"):  # step 1: every service learns k2, one after another
        assert disagreements(name, both, keys, services) == []
        more_keys, more = recorded(name, both)
        keys |= more_keys
        services |= more
    for name in ("intake", "policy", "executor"):  # step 2: each makes k2 current
        assert disagreements(name, rotated, keys, services) == []
        more_keys, more = recorded(name, rotated)
        keys |= {kid: value for kid, value in more_keys.items() if kid not in keys}
        services |= more


def test_a_key_made_current_before_the_others_hold_it_is_refused() -> None:
    old = Keyring.generate("k1")
    keys, services = recorded("executor", old)
    ahead = Keyring("k2", {"k2": Keyring.generate("k2").keys["k2"], **old.keys})

    problems = disagreements("intake", ahead, keys, services)

    assert problems == [
        "this service would seal and warrant with key 'k2', which the ring of the executor service (started "
        "2026-12-07T22:00:00+00:00) does not hold: add a key to every ring before any service makes it current"
    ]


def test_a_services_own_earlier_ring_does_not_hold_it_back() -> None:
    """A service restarted with a new current key is compared with the others, not with itself."""
    old = Keyring.generate("k1")
    keys, services = recorded("intake", old)
    new = Keyring.generate("k2")

    assert disagreements("intake", new, keys, services) == []
