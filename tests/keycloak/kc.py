"""What the Python helpers around the test Keycloak share: the env file that
tests/keycloak/start writes, JSON/form HTTP calls, and an admin token."""
import json
import urllib.error
import urllib.parse
import urllib.request


def load_env(path="target/keycloak/env"):
    return dict(line.rstrip("\n").split("=", 1) for line in open(path) if "=" in line)


def call(url, form=None, token=None, method="POST", body=None):
    """(status, parsed JSON body or None); HTTP errors are answers, not exceptions."""
    data, headers = None, {}
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def admin_token(env):
    status, answer = call(f"{env['KEYCLOAK_URL']}/realms/master/protocol/openid-connect/token", form={
        "grant_type": "password", "client_id": "admin-cli",
        "username": "admin", "password": env["KEYCLOAK_ADMIN_PASSWORD"],
    })
    assert status == 200, answer
    return answer["access_token"]


def set_min_validity(env, admin, seconds):
    """Set the `azure` provider's minValidityToken; the value it had (or None)."""
    url = f"{env['KEYCLOAK_URL']}/admin/realms/DominoRealm/identity-provider/instances/azure"
    idp = call(url, token=admin, method="GET")[1]
    before = idp["config"].get("minValidityToken")
    idp["config"]["minValidityToken"] = seconds
    status, answer = call(url, token=admin, method="PUT", body=idp)
    assert 200 <= status < 300, (status, answer)
    return before


def link(env, user):
    """Link USER to `azure` through Keycloak's idp_link action in Chromium, as the
    tests do (tests/keycloak/browser/browser.mjs)."""
    import subprocess

    url = f"{env['KEYCLOAK_URL']}/realms/DominoRealm/protocol/openid-connect/auth?" + urllib.parse.urlencode({
        "client_id": "domino-tokenfs", "response_type": "code", "scope": "openid",
        "redirect_uri": "http://127.0.0.1:9/linked", "kc_action": "idp_link:azure"})
    done = subprocess.run(
        ["node", "tests/keycloak/browser/browser.mjs", "consent", "-"], capture_output=True, text=True,
        input=json.dumps({"url": url, "kc_username": user, "kc_password": f"{user}-kc-pw",
                          "idp_username": user, "idp_password": f"{user}-idp-pw",
                          "callback_prefix": "http://127.0.0.1:9/linked"}))
    assert done.returncode == 0, done.stdout


def user_token(env, user, scope="openid"):
    """The token response of a password grant for USER at domino-tokenfs."""
    status, answer = call(f"{env['KEYCLOAK_URL']}/realms/DominoRealm/protocol/openid-connect/token", form={
        "grant_type": "password", "client_id": "domino-tokenfs",
        "client_secret": env["KEYCLOAK_CLIENT_SECRET"],
        "username": user, "password": f"{user}-kc-pw", "scope": scope})
    assert status == 200, answer
    return answer
