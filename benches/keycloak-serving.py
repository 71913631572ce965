"""Seconds of failed `azure-token` reads per token lifetime against the real Keycloak,
with the identity provider's minValidityToken at SECONDS (Keycloak's default is 5).

Links USER to `azure` through Keycloak's idp_link action (Chromium, as the tests
do), mounts tokenfs (target/debug/tokenfs, `cargo build` first) with `azure-token`
exchanging the user's token at min_valid 20s, reads it every 100 ms for three of the
test provider's 60 s lifetimes, and prints how long reads failed, per lifetime. The
setting is put back afterwards. Needs `bash tests/keycloak/start`; the user must not
be linked yet and not be in use by a running test (e.g. dave, once the tests ran).

    python3 benches/keycloak-serving.py SECONDS USER
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "keycloak"))
from kc import admin_token, link, load_env, set_min_validity, user_token  # noqa: E402

env = load_env()
kc = env["KEYCLOAK_URL"]
realm = kc + "/realms/DominoRealm"
token_url = realm + "/protocol/openid-connect/token"
min_validity, user = sys.argv[1], sys.argv[2]
secret = env["KEYCLOAK_CLIENT_SECRET"]
LIFETIME, LIFETIMES = 60, 3

link(env, user)
offline = user_token(env, user, "openid offline_access")["refresh_token"]

tmp = tempfile.mkdtemp()
os.chmod(tmp, 0o755)
for name, value in [("client-secret", secret), ("offline-token", offline)]:
    with open(os.path.join(tmp, name), "w", opener=lambda p, f: os.open(p, f, 0o600)) as f:
        f.write(value)
config = os.path.join(tmp, "config.toml")
with open(config, "w", opener=lambda p, f: os.open(p, f, 0o600)) as f:
    f.write(f"""[files.token]
source = "oauth2"
token_url = "{token_url}"
client_id = "domino-tokenfs"
client_secret_file = "{tmp}/client-secret"
refresh_token_file = "{tmp}/offline-token"
rotated_refresh_token_file = "{tmp}/rotated"

[files.azure-token]
source = "token-exchange"
token_url = "{token_url}"
client_id = "domino-tokenfs"
client_secret_file = "{tmp}/client-secret"
subject = "token"
requested_issuer = "azure"
redirect_uri = "http://127.0.0.1:9/linked"
min_valid = "20s"
""")
api = os.path.join(tmp, "api")
before = set_min_validity(env, admin_token(env), min_validity)
daemon = subprocess.Popen(["target/debug/tokenfs", "mount", api, "--config", config],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
try:
    for _ in range(300):
        if os.path.exists(os.path.join(api, ".status")):
            break
        time.sleep(0.1)
    failed, reads, start = 0.0, 0, time.time()
    while time.time() - start < LIFETIME * LIFETIMES:
        reads += 1
        try:
            with open(os.path.join(api, "azure-token"), "rb") as f:
                f.read()
        except OSError:
            failed += 0.1
        time.sleep(0.1)
    print(f"minValidityToken {min_validity} s, min_valid 20 s, floor 5 s, {LIFETIME} s tokens: "
          f"{reads} reads, {failed / LIFETIMES:.1f} s of failed reads per lifetime")
finally:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=20)
    warned = daemon.stderr.read().decode().count("serving a token below min_valid")
    print(f"warn lines 'serving a token below min_valid': {warned}")
    if before is not None:
        set_min_validity(env, admin_token(env), before)
