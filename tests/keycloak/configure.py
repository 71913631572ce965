"""Gives the realm what an import file cannot: the fine-grained permission that lets
`domino-tokenfs` (and `domino-tokenfs-short`) exchange tokens for the `azure`
identity provider's. Its ids are made by the server, so it is set through the admin
API, as a Keycloak admin would in the console (Identity providers → azure →
Permissions → token-exchange). `domino-other` gets no such permission (the 403 test).

Usage: python3 tests/keycloak/configure.py target/keycloak/env
"""
import sys

from kc import admin_token, call, load_env

env = load_env(sys.argv[1])
base = env["KEYCLOAK_URL"]
realm = f"{base}/admin/realms/DominoRealm"
token = admin_token(env)


def client_id(name):
    return call(f"{realm}/clients?clientId={name}", token=token, method="GET")[1][0]["id"]


perms = call(f"{realm}/identity-provider/instances/azure/management/permissions",
             body={"enabled": True}, token=token, method="PUT")[1]
exchange_perm = perms["scopePermissions"]["token-exchange"]
authz = f"{realm}/clients/{client_id('realm-management')}/authz/resource-server"
policy = call(f"{authz}/policy/client", token=token, body={
    "name": "tokenfs clients", "logic": "POSITIVE",
    "clients": [client_id("domino-tokenfs"), client_id("domino-tokenfs-short")],
})[1]
perm = call(f"{authz}/permission/scope/{exchange_perm}", token=token, method="GET")[1]
perm["policies"] = [policy["id"]]
perm["decisionStrategy"] = "AFFIRMATIVE"
status, answer = call(f"{authz}/permission/scope/{exchange_perm}", body=perm, token=token,
                      method="PUT")
assert 200 <= status < 300, (status, answer)
print("DominoRealm: domino-tokenfs may exchange tokens for azure's")
