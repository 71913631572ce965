"""How close to its expiry Keycloak hands out the stored identity-provider token.

Links USER to `azure` through Keycloak's idp_link action (Chromium, as the tests do),
sets the provider's minValidityToken to SECONDS, then asks Keycloak's exchange every
0.5 s until the stored token is replaced, and prints the smallest lifetime left that
Keycloak handed out. The setting is put back to what it was (30 in the test realm).
Needs `bash tests/keycloak/start`; the user must not be linked yet (e.g. carol, dave).

    python3 benches/keycloak-gap.py SECONDS USER
"""
import json, subprocess, sys, time, urllib.parse, urllib.request
env = dict(l.strip().split("=",1) for l in open("target/keycloak/env") if "=" in l)
kc = env["KEYCLOAK_URL"]; realm = kc + "/realms/DominoRealm"; tok = realm + "/protocol/openid-connect/token"
mv = sys.argv[1]; user = sys.argv[2]
def post(url, form, token=None, method="POST", body=None):
    data = urllib.parse.urlencode(form).encode() if form is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/x-www-form-urlencoded" if form is not None else "application/json"}
    if token: h["Authorization"] = "Bearer " + token
    try:
        r = urllib.request.urlopen(urllib.request.Request(url, data=data, headers=h, method=method), timeout=30)
        raw = r.read(); return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
_, a = post(kc + "/realms/master/protocol/openid-connect/token", {"grant_type":"password","client_id":"admin-cli","username":"admin","password":env["KEYCLOAK_ADMIN_PASSWORD"]})
adm = a["access_token"]
idp_url = realm.replace("/realms/", "/admin/realms/") + "/identity-provider/instances/azure"
_, idp = post(idp_url, None, adm, "GET")
before = idp["config"].get("minValidityToken")
idp["config"]["minValidityToken"] = mv
print("set minValidityToken", mv, post(realm.replace("/realms/", "/admin/realms/") + "/identity-provider/instances/azure", None, adm, "PUT", idp)[0])
sec = env["KEYCLOAK_CLIENT_SECRET"]
_, t = post(tok, {"grant_type":"password","client_id":"domino-tokenfs","client_secret":sec,"username":user,"password":user+"-kc-pw","scope":"openid"})
at = t["access_token"]
link = realm + "/protocol/openid-connect/auth?" + urllib.parse.urlencode({"client_id":"domino-tokenfs","response_type":"code","scope":"openid","redirect_uri":"http://127.0.0.1:9/linked","kc_action":"idp_link:azure"})
args = json.dumps({"url":link,"kc_username":user,"kc_password":user+"-kc-pw","idp_username":user,"idp_password":user+"-idp-pw","callback_prefix":"http://127.0.0.1:9/linked"})
print(subprocess.run(["node","tests/keycloak/browser/browser.mjs","consent","-"], input=args, capture_output=True, text=True).stdout.strip()[:200])
first = None; t0 = time.time(); rows = []
while time.time() - t0 < 75:
    s, b = post(tok, {"grant_type":"urn:ietf:params:oauth:grant-type:token-exchange","client_id":"domino-tokenfs","client_secret":sec,"subject_token":at,"subject_token_type":"urn:ietf:params:oauth:token-type:access_token","requested_issuer":"azure"})
    if s == 401 or (s == 400 and b.get("error") == "invalid_request"):
        _, t = post(tok, {"grant_type":"password","client_id":"domino-tokenfs","client_secret":sec,"username":user,"password":user+"-kc-pw","scope":"openid"}); at = t["access_token"]; continue
    tokn = b.get("access_token"); ei = b.get("expires_in")
    if first is None: first = tokn
    rows.append((round(time.time()-t0,1), s, ei, tokn == first))
    if tokn != first: break
    time.sleep(0.5)
old = [r for r in rows if r[3]]
print("status/expires_in of the old stored token, last 4:", old[-4:])
print("first new:", rows[-1])
print("smallest expires_in Keycloak handed out for the old token:", min(r[2] for r in old))
if before is not None:
    idp["config"]["minValidityToken"] = before
    post(idp_url, None, adm, "PUT", idp)
