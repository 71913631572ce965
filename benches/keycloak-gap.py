"""How close to its expiry Keycloak hands out the stored identity-provider token.

Links USER to `azure` through Keycloak's idp_link action (Chromium, as the tests do),
sets the provider's minValidityToken to SECONDS, then asks Keycloak's exchange every
0.5 s until the stored token is replaced, and prints the smallest lifetime left that
Keycloak handed out. The setting is put back afterwards (30 in the test realm).
Needs `bash tests/keycloak/start`; the user must not be linked yet (e.g. carol, dave).

    python3 benches/keycloak-gap.py SECONDS USER
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "keycloak"))
from kc import admin_token, call, link, load_env, set_min_validity, user_token  # noqa: E402

env = load_env()
seconds, user = sys.argv[1], sys.argv[2]
token_url = f"{env['KEYCLOAK_URL']}/realms/DominoRealm/protocol/openid-connect/token"
before = set_min_validity(env, admin_token(env), seconds)
try:
    link(env, user)
    subject = user_token(env, user)["access_token"]
    first, rows, start = None, [], time.time()
    while time.time() - start < 75:
        status, answer = call(token_url, form={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "client_id": "domino-tokenfs", "client_secret": env["KEYCLOAK_CLIENT_SECRET"],
            "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "requested_issuer": "azure"})
        if status != 200:  # the 60 s subject token expired: a new one
            subject = user_token(env, user)["access_token"]
            continue
        first = first or answer["access_token"]
        rows.append((round(time.time() - start, 1), answer["expires_in"], answer["access_token"] == first))
        if answer["access_token"] != first:
            break
        time.sleep(0.5)
    old = [r for r in rows if r[2]]
    print(f"minValidityToken {seconds} s: the old stored token came back down to "
          f"{min(r[1] for r in old)} s left; the new one at {rows[-1][0]} s with {rows[-1][1]} s")
finally:
    if before is not None:
        set_min_validity(env, admin_token(env), before)
