"""Gives the realm what an import file cannot: the fine-grained permission that lets
`domino-tokenfs` (and `domino-tokenfs-short`) exchange tokens for the `azure`
identity provider's. Its ids are made by the server, so it is set through the admin
API, as a Keycloak admin would in the console (Identity providers → azure →
Permissions → token-exchange). `domino-other` gets no such permission (the 403 test).

Usage: python3 tests/keycloak/configure.py target/keycloak/env
"""
import json
import sys
import urllib.parse
import urllib.request

env = dict(line.rstrip("\n").split("=", 1) for line in open(sys.argv[1]) if "=" in line)
base = env["KEYCLOAK_URL"]
realm = f"{base}/admin/realms/DominoRealm"


def call(method, url, body=None, form=None, token=None):
    headers = {}
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


token = call("POST", f"{base}/realms/master/protocol/openid-connect/token", form={
    "grant_type": "password", "client_id": "admin-cli",
    "username": "admin", "password": env["KEYCLOAK_ADMIN_PASSWORD"],
})["access_token"]


def client_id(name):
    return call("GET", f"{realm}/clients?clientId={name}", token=token)[0]["id"]


perms = call("PUT", f"{realm}/identity-provider/instances/azure/management/permissions",
             body={"enabled": True}, token=token)
exchange_perm = perms["scopePermissions"]["token-exchange"]
authz = f"{realm}/clients/{client_id('realm-management')}/authz/resource-server"
policy = call("POST", f"{authz}/policy/client", token=token, body={
    "name": "tokenfs clients", "logic": "POSITIVE",
    "clients": [client_id("domino-tokenfs"), client_id("domino-tokenfs-short")],
})
perm = call("GET", f"{authz}/permission/scope/{exchange_perm}", token=token)
perm["policies"] = [policy["id"]]
perm["decisionStrategy"] = "AFFIRMATIVE"
call("PUT", f"{authz}/permission/scope/{exchange_perm}", body=perm, token=token)
print("DominoRealm: domino-tokenfs may exchange tokens for azure's")
