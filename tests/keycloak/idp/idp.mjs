// Stand-in for Azure Entra ID: a certified OpenID provider (oidc-provider) on loopback http,
// with one confidential client (Keycloak's identity broker), a few fixed users, JWT access tokens
// for a storage-like resource, rotating refresh tokens, and a small /__admin API for tests.
// A second client, DEVICE_CLIENT_ID, uses the device authorization grant (RFC 8628) directly.
import http from 'node:http';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const env = process.env;
const CLIENT_ID = env.IDP_CLIENT_ID || 'keycloak-broker';
const CLIENT_SECRET = env.IDP_CLIENT_SECRET || 'keycloak-broker-secret';
const DEVICE_CLIENT_ID = 'tokenfs-device';
const DEVICE_CLIENT_SECRET = env.IDP_DEVICE_CLIENT_SECRET || 'tokenfs-device-secret';
// tokenfs's code login (authorization code + PKCE), landing where the tests' browser stops.
const CODE_CLIENT_ID = 'tokenfs-code';
const CODE_CLIENT_SECRET = env.IDP_CODE_CLIENT_SECRET || 'tokenfs-code-secret';
const CODE_REDIRECT_URI = 'http://127.0.0.1:9/callback';
const REDIRECT_URIS = (env.IDP_REDIRECT_URIS || 'http://127.0.0.1:18080/realms/DominoRealm/broker/azure/endpoint').split(',').map((s) => s.trim()).filter(Boolean);
const RESOURCE = env.IDP_RESOURCE || 'https://storage.azure.com';
const AT_TTL = Number(env.IDP_AT_TTL || 60);
const RT_TTL = Number(env.IDP_RT_TTL || 86400);
const log = (msg) => process.stderr.write(`idp: ${msg}\n`);
// stdout carries only the IDP_READY line; oidc-provider prints its NOTICEs with console.info.
console.log = console.info = console.error;

// One account per user of the test realm (tests/keycloak/DominoRealm.json): login NAME,
// password NAME-idp-pw; sub/oid mimic an Entra object id.
const NAMES = (env.IDP_USERS || 'alice,bob,carol,dave,erin,frank,grace,heidi').split(',');
const USERS = Object.fromEntries(NAMES.map((name) => [name, {
  password: `${name}-idp-pw`, sub: `${name}-entra-oid`,
  claims: { name: `${name} Example`, preferred_username: `${name}@contoso.example`, upn: `${name}@contoso.example`,
    email: `${name}@contoso.example`, email_verified: true, oid: `${name}-entra-oid`, tid: '00000000-0000-0000-0000-00000000c0de' },
}]));
const bySub = (sub) => Object.values(USERS).find((u) => u.sub === sub);

// Map-based adapter (instead of the built-in LRU one) so /__admin/revoke can enumerate
// everything stored for an account. Structured (JWT) access tokens are never stored.
const store = new Map(); // `${model}:${id}` -> { payload, exp }
class MapAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload, expiresIn) {
    store.set(this.key(id), { payload, exp: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
  }
  async find(id) { const e = store.get(this.key(id)); return e && e.exp >= Date.now() ? e.payload : undefined; }
  async findByUid(uid) {
    for (const [k, e] of store) if (k.startsWith('Session:') && e.payload.uid === uid) return this.find(k.slice(8));
    return undefined;
  }
  async findByUserCode(userCode) {
    for (const [k, e] of store) if (k.startsWith(`${this.model}:`) && e.payload.userCode === userCode) return this.find(k.slice(this.model.length + 1));
    return undefined;
  }
  async consume(id) { const e = store.get(this.key(id)); if (e) e.payload.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) { for (const [k, e] of store) if (e.payload.grantId === grantId) store.delete(k); }
}

const jwk = { ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: randomUUID(), alg: 'RS256', use: 'sig' };

const config = {
  adapter: MapAdapter,
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] }, // no `secure`: it is only set on https requests
  clients: [{
    client_id: CLIENT_ID, client_secret: CLIENT_SECRET, redirect_uris: REDIRECT_URIS,
    grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
    // v9 accepts client_secret_basic as well for a client registered with client_secret_post
    token_endpoint_auth_method: 'client_secret_post',
  }, {
    client_id: DEVICE_CLIENT_ID, client_secret: DEVICE_CLIENT_SECRET, redirect_uris: [], response_types: [],
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    token_endpoint_auth_method: 'client_secret_post',
  }, {
    client_id: CODE_CLIENT_ID, client_secret: CODE_CLIENT_SECRET, redirect_uris: [CODE_REDIRECT_URI],
    grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  // Entra-like: identity claims ride in the id_token (the JWT access token is for the resource,
  // not for userinfo), so map them all to `openid`, which is the only scope Keycloak must send.
  claims: { openid: ['sub', ...Object.keys(USERS[NAMES[0]].claims)], email: ['email', 'email_verified'], profile: ['name'] },
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  async findAccount(ctx, sub) {
    const u = bySub(sub);
    return u && { accountId: sub, async claims() { return { sub, ...u.claims }; } };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false }, // own pages below: they check the password
    revocation: { enabled: true },
    // Own pages (the built-in ones import web fonts, which this machine cannot reach).
    deviceFlow: {
      enabled: true,
      userCodeInputSource: async (ctx, form, out, err) => {
        ctx.type = 'html';
        ctx.body = page('Device sign-in', `${err ? '<p id="error">The code is not valid.</p>' : ''}${form}`
          + '<button id="device-continue" type="submit" form="op.deviceInputForm">Continue</button>');
      },
      userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
        ctx.type = 'html';
        ctx.body = page('Confirm device', `<p>Code <code id="user-code">${esc(userCode)}</code></p>${form}`
          + '<button id="device-confirm" type="submit" form="op.deviceConfirmForm">Continue</button>'
          + '<button id="device-abort" type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>');
      },
      successSource: async (ctx) => { ctx.type = 'html'; ctx.body = page('Sign-in Success', '<p id="device-done">You may close this page.</p>'); },
    },
    resourceIndicators: {
      enabled: true,
      // Keycloak's broker sends no `resource`: default it, and reuse it at the token endpoint,
      // so that code and refresh grants both yield a JWT with aud=RESOURCE (typ at+jwt).
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== RESOURCE) throw new Provider.errors.InvalidTarget();
        return { scope: 'user_impersonation', audience: RESOURCE, accessTokenFormat: 'jwt', accessTokenTTL: AT_TTL };
      },
    },
  },
  // Always give the broker a refresh token (Keycloak does not ask for offline_access), not
  // tied to the IdP browser session, rotated on every use (reuse of an old one kills the grant).
  issueRefreshToken: (ctx, client) => [CLIENT_ID, DEVICE_CLIENT_ID, CODE_CLIENT_ID].includes(client.clientId),
  expiresWithSession: () => false,
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: AT_TTL, RefreshToken: RT_TTL, Grant: Math.max(RT_TTL, 3600) * 2,
    IdToken: 3600, Interaction: 600, Session: 86400, AuthorizationCode: 60,
  },
  conformIdTokenClaims: false,
  renderError(ctx, out) { ctx.type = 'html'; ctx.body = page('IdP error', `<p id="error">${esc(out.error)}: ${esc(out.error_description || '')}</p>`); },
};

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!doctype html><html><head><title>${esc(title)}</title></head><body><h1>${esc(title)}</h1>${body}</body></html>`;
async function readForm(req) {
  let s = '';
  for await (const chunk of req) s += chunk;
  return Object.fromEntries(new URLSearchParams(s));
}

const stats = { token_requests: {}, token_errors: {} };

// Interaction pages (login, then an explicit consent) and the admin API.
async function extras(provider, ctx, next) {
  const { path, method } = ctx;
  if (path === '/__admin/stats' && method === 'GET') { ctx.body = stats; return; }
  if (path === '/__admin/revoke' && method === 'POST') {
    const sub = ctx.query.sub;
    let revoked = 0;
    for (const [k, e] of store) if (e.payload.accountId === sub) { store.delete(k); revoked += 1; }
    log(`admin revoke sub=${sub} removed=${revoked}`);
    ctx.body = { sub, revoked };
    return;
  }
  const m = path.match(/^\/interaction\/([\w-]+)(\/login|\/confirm|\/abort)?$/);
  if (m) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params, session, grantId } = details;
    if (!m[2] && method === 'GET') {
      ctx.type = 'html';
      ctx.body = prompt.name === 'login'
        ? page('Sign in to Contoso', `<form method="post" action="${path}/login"><input id="login" name="login" placeholder="user">`
          + `<input id="password" name="password" type="password"><button id="signin" type="submit">Sign in</button></form>`)
        : page('Permissions requested', `<p>${esc(params.client_id)} asks for: ${esc(params.scope)}</p>`
          + `<form method="post" action="${path}/confirm"><button id="accept" type="submit">Accept</button></form>`
          + `<form method="post" action="${path}/abort"><button id="deny" type="submit">Cancel</button></form>`);
      return;
    }
    if (m[2] === '/login' && method === 'POST') {
      const { login, password } = await readForm(ctx.req);
      const u = USERS[login];
      if (!u || u.password !== password) {
        ctx.type = 'html';
        ctx.body = page('Sign in to Contoso', '<p id="error">Invalid username or password.</p>');
        return;
      }
      await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: u.sub } }, { mergeWithLastSubmission: false });
      return;
    }
    if (m[2] === '/confirm' && method === 'POST') {
      // Grant exactly what is missing, as oidc-provider's own dev consent page does.
      const grant = grantId ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const d = prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      for (const [ind, sc] of Object.entries(d.missingResourceScopes || {})) grant.addResourceScope(ind, sc.join(' '));
      await provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
      return;
    }
    if (m[2] === '/abort' && method === 'POST') {
      await provider.interactionFinished(ctx.req, ctx.res, { error: 'access_denied', error_description: 'user cancelled' }, { mergeWithLastSubmission: false });
      return;
    }
  }
  await next();
  if (path === '/token' && method === 'POST') {
    const gt = ctx.oidc?.params?.grant_type || 'unknown';
    const err = ctx.status >= 400 ? (ctx.body?.error || String(ctx.status)) : null;
    stats.token_requests[gt] = (stats.token_requests[gt] || 0) + 1;
    if (err) stats.token_errors[gt] = (stats.token_errors[gt] || 0) + 1;
    const auth = /^basic /i.test(ctx.headers.authorization || '') ? 'client_secret_basic' : 'client_secret_post';
    log(`token grant_type=${gt} client=${ctx.oidc?.client?.clientId || '-'} auth=${auth} outcome=${err ? `error:${err}` : 'ok'} status=${ctx.status}`);
  }
}

let handler = (req, res) => { res.statusCode = 503; res.end(); };
const server = http.createServer((req, res) => handler(req, res));
server.listen(Number(env.IDP_PORT || 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, config);
  provider.use((ctx, next) => extras(provider, ctx, next));
  provider.on('server_error', (ctx, err) => log(`server_error ${err.stack}`));
  handler = provider.callback();
  process.stdout.write(`IDP_READY ${issuer}\n`);
});
const stop = () => { server.closeAllConnections(); process.exit(0); }; // browsers hold keep-alives
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
