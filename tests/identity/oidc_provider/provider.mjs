// A real, independent OpenID provider for amber's tests: panva/oidc-provider (certified OpenID Connect),
// configured from one JSON file and served on loopback. Only the login page is ours (a form that signs in
// the named test account without a password, because there are no passwords to check in tests); everything
// else (discovery, JWKS, authorization code + PKCE, device authorization grant, tokens, refresh, end
// session) is the library's own, unchanged.
//
// usage: node provider.mjs CONFIG.json     CONFIG: {issuer, port, keys: [private JWKs], clients: [...],
//        accounts: {login: {groups, email, name}}, resource: {indicator, scope, ttl_s}, cookie_keys: [...]}
// Prints "ready <issuer>" on stdout when it listens.
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts;

function account(id) {
  const data = accounts[id];
  if (!data) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: data.sub || id,
        preferred_username: id,
        name: data.name || id,
        email: data.email || `${id}@example.test`,
        email_verified: true,
        groups: data.groups || [],
      };
    },
  };
}

const resource = config.resource;
const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: { keys: config.keys },
  cookies: { keys: config.cookie_keys },
  findAccount: async (_ctx, id) => account(id),
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  pkce: { required: () => true },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource.indicator,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => {
        const known = [resource.indicator, ...(resource.others || [])];
        if (!known.includes(indicator)) throw new Error(`unknown resource ${indicator}`);
        return {
          scope: resource.scope,
          audience: indicator,
          accessTokenTTL: resource.ttl_s || 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: config.keys[0].alg || 'RS256' } },
        };
      },
    },
  },
  // The groups and names amber reads, in the JWT access tokens too (the way Okta and Entra put them there).
  extraTokenClaims: async (_ctx, token) => {
    if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
    const claims = await account(token.accountId).claims();
    return { groups: claims.groups, preferred_username: claims.preferred_username, email: claims.email };
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: { IdToken: 600, DeviceCode: 600, Interaction: 600, Session: 3600, Grant: 3600, RefreshToken: 3600 },
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    return grantId ? ctx.oidc.provider.Grant.find(grantId) : undefined;
  },
});
provider.proxy = false;

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// Consent is given for whatever the client asked (a test provider has no one to ask).
async function consent(req, res, details) {
  const { prompt, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  if (prompt.details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  const result = details.grantId ? { consent: {} } : { consent: { grantId } };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

async function interactions(req, res) {
  const url = new URL(req.url, config.issuer);
  const match = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!match) return false;
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'POST' && match[2]) {
    const form = await readForm(req);
    const login = form.get('login') || '';
    if (!accounts[login]) {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`no such test account: ${login}`);
      return true;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return true;
  }
  if (details.prompt.name === 'consent') {
    await consent(req, res, details);
    return true;
  }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><title>Sign in</title><h1>Test provider: sign in</h1>
<form method="post" action="/interaction/${escape(details.uid)}/login">
<input name="login" autofocus placeholder="account"><button type="submit">Sign in</button></form>`);
  return true;
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    if (await interactions(req, res)) return;
    callback(req, res);
  } catch (err) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`test provider error: ${err.message}`);
  }
});
server.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${config.issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
