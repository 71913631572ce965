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
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

env = dict(l.strip().split("=", 1) for l in open("target/keycloak/env") if "=" in l)
kc = env["KEYCLOAK_URL"]
realm = kc + "/realms/DominoRealm"
token_url = realm + "/protocol/openid-connect/token"
admin_realm = kc + "/admin/realms/DominoRealm"
min_validity, user = sys.argv[1], sys.argv[2]
secret = env["KEYCLOAK_CLIENT_SECRET"]
LIFETIME, LIFETIMES = 60, 3


def call(url, form=None, token=None, method="POST", body=None):
    data, headers = None, {}
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer " + token
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


admin = call(kc + "/realms/master/protocol/openid-connect/token", {
    "grant_type": "password", "client_id": "admin-cli",
    "username": "admin", "password": env["KEYCLOAK_ADMIN_PASSWORD"]})[1]["access_token"]
idp_url = admin_realm + "/identity-provider/instances/azure"
idp = call(idp_url, token=admin, method="GET")[1]
before = idp["config"].get("minValidityToken")
idp["config"]["minValidityToken"] = min_validity
call(idp_url, token=admin, method="PUT", body=idp)

link = realm + "/protocol/openid-connect/auth?" + urllib.parse.urlencode({
    "client_id": "domino-tokenfs", "response_type": "code", "scope": "openid",
    "redirect_uri": "http://127.0.0.1:9/linked", "kc_action": "idp_link:azure"})
linked = subprocess.run(
    ["node", "tests/keycloak/browser/browser.mjs", "consent", "-"], capture_output=True, text=True,
    input=json.dumps({"url": link, "kc_username": user, "kc_password": user + "-kc-pw",
                      "idp_username": user, "idp_password": user + "-idp-pw",
                      "callback_prefix": "http://127.0.0.1:9/linked"}))
assert linked.returncode == 0, linked.stdout
offline = call(token_url, {"grant_type": "password", "client_id": "domino-tokenfs", "client_secret": secret,
                           "username": user, "password": user + "-kc-pw",
                           "scope": "openid offline_access"})[1]["refresh_token"]

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
        idp["config"]["minValidityToken"] = before
        call(idp_url, token=admin, method="PUT", body=idp)
