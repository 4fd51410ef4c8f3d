"""Token loading and lease grants: pure, table-driven."""

from __future__ import annotations

import pytest

from rfork_api.auth import (
    AuthConfigError, GrantClaims, InvalidGrant, grant_key, load_token, sign_grant, verify_grant,
)

CLAIMS = GrantClaims("job1", "job1-a1", "seed-0", 0, 4096, expires_at=1_000_100.0)
KEY = grant_key("fleet-secret")


def test_token_from_file_beats_env(tmp_path):
    f = tmp_path / "token"
    f.write_text("  from-file\n")
    assert load_token(str(f), environ={"RFORK_TOKEN": "from-env"}) == "from-file"
    assert load_token(None, environ={"RFORK_TOKEN_FILE": str(f)}) == "from-file"
    assert load_token(None, environ={"RFORK_TOKEN": " from-env "}) == "from-env"
    assert load_token(None, environ={}) is None
    assert load_token(None, environ={"RFORK_TOKEN": "   "}) is None


@pytest.mark.parametrize("content, needle", [(None, "cannot read"), ("", "is empty"), ("\n  \n", "is empty")])
def test_unusable_token_files_say_how_to_fix(tmp_path, content, needle):
    f = tmp_path / "token"
    if content is not None:
        f.write_text(content)
    with pytest.raises(AuthConfigError, match=needle) as info:
        load_token(str(f), environ={})
    assert "openssl rand" in str(info.value)


def test_a_signed_grant_verifies_for_exactly_its_claims():
    grant = sign_grant(KEY, CLAIMS)
    assert verify_grant(KEY, grant, CLAIMS, now=1_000_000.0) == CLAIMS


@pytest.mark.parametrize("change, needle", [
    ({"job_id": "job2"}, "job_id='job1'"),
    ({"assignment_id": "job1-a2"}, "assignment_id"),
    ({"seed_id": "seed-1"}, "seed_id"),
    ({"rank": 1}, "rank"),
    ({"bytes": 8192}, "bytes"),
])
def test_a_grant_for_something_else_is_refused(change, needle):
    grant = sign_grant(KEY, CLAIMS)
    expected = GrantClaims(**{**CLAIMS.__dict__, **change})
    with pytest.raises(InvalidGrant, match=needle):
        verify_grant(KEY, grant, expected, now=1_000_000.0)


@pytest.mark.parametrize("grant, key, now, needle", [
    ("", KEY, 0.0, "no grant"),
    ("garbage", KEY, 0.0, "signature"),
    (sign_grant(grant_key("another-fleet"), CLAIMS), KEY, 0.0, "signature"),
    (sign_grant(KEY, CLAIMS), KEY, 1_000_100.0, "expired"),
    (sign_grant(KEY, CLAIMS)[:-1] + "0", KEY, 0.0, "signature"),
])
def test_forged_expired_and_empty_grants_are_refused(grant, key, now, needle):
    with pytest.raises(InvalidGrant, match=needle):
        verify_grant(key, grant, CLAIMS, now=now)


def test_a_tampered_payload_with_the_old_mac_is_refused():
    payload, mac = sign_grant(KEY, CLAIMS).split(".")
    other = sign_grant(KEY, GrantClaims(**{**CLAIMS.__dict__, "bytes": 1 << 40})).split(".")[0]
    with pytest.raises(InvalidGrant, match="signature"):
        verify_grant(KEY, f"{other}.{mac}", CLAIMS, now=0.0)
