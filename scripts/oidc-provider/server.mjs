// Loopback OpenID Connect provider for hpcgw integration tests.
//
//   node server.mjs --config FILE --state FILE
//
// Wraps panva's oidc-provider (pinned in package.json). Listens on 127.0.0.1 on
// the config's "port" (default 0 = pick a free one), uses the issuer
// http://127.0.0.1:<port>, and once listening writes {"issuer", "pid"} to the
// state file (atomically). SIGTERM/SIGINT: stop, remove the state file, exit 0.
// Interactions: a username/password form at /interaction/<uid>; consent is
// granted automatically for the requested scopes. Everything is in memory.
//
// Config (JSON): {
//   "clients": [{"client_id", "client_secret", "redirect_uris": [...],
//                "token_endpoint_auth_method": "client_secret_basic" | "client_secret_post", ...}],
//   "accounts": {"alice": {"password": "...", "claims": {"preferred_username": "alice",
//                "email": "alice@example.org", "name": "Alice"}}},
//   optional: "cookie_keys": ["..."], "jwks": {"keys": [private JWKs]},
//             "ttl": {"AccessToken": 3600, ...} (seconds), "port": 0
// }
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node server.mjs --config FILE --state FILE\n`);
  process.exit(2);
}

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  const [flag, value] = process.argv.slice(i, i + 2);
  if (!['--config', '--state'].includes(flag) || value === undefined) usage(`bad argument: ${flag}`);
  args[flag.slice(2)] = value;
}
if (!args.config || !args.state) usage('--config and --state are required');

const config = JSON.parse(fs.readFileSync(args.config, 'utf8'));
const accounts = config.accounts ?? {};

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const digest = (s) => crypto.createHash('sha256').update(String(s)).digest();

function checkPassword(login, password) {
  const account = Object.hasOwn(accounts, login) ? accounts[login] : undefined;
  // compare digests so the comparison is constant-time whatever the lengths
  const ok = crypto.timingSafeEqual(digest(account?.password ?? crypto.randomUUID()), digest(password));
  return Boolean(account) && ok;
}

async function readForm(req, limit = 64 * 1024) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > limit) throw new Error('request body too large');
  }
  return new URLSearchParams(body);
}

function page(ctx, status, title, inner) {
  ctx.status = status;
  ctx.type = 'html';
  ctx.body = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><main><h1>${escapeHtml(title)}</h1>
${inner}
</main></body></html>
`;
}

function loginPage(ctx, { uid, params, client }, { login = '', error = '' } = {}) {
  const clientName = client?.clientName || params.client_id;
  page(ctx, 200, 'Sign in', `<p>to continue to <strong>${escapeHtml(clientName)}</strong></p>
${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <p><label for="login">Username</label>
  <input id="login" name="login" type="text" required autofocus value="${escapeHtml(login)}"></p>
  <p><label for="password">Password</label>
  <input id="password" name="password" type="password" required></p>
  <p><button type="submit">Sign in</button></p>
</form>`);
}

// Consent is never shown: like oidc-provider's recipes/skip_consent.md, load or create
// the (client, account) grant and add whatever OIDC scopes/claims this request asks for.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const accountId = oidc.account.accountId;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant || grant.accountId !== accountId) {
    grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId });
  }
  grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
  grant.addOIDCClaims([...oidc.requestParamClaims]);
  await grant.save();
  return grant;
}

let jwks = config.jwks;
if (!jwks) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  jwks = { keys: [{ ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' }] };
}

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port ?? 0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: config.clients ?? [],
  jwks,
  async findAccount(ctx, sub) {
    if (!Object.hasOwn(accounts, sub)) return undefined;
    return {
      accountId: sub,
      async claims() { return { ...accounts[sub].claims, sub }; },
    };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'nickname', 'picture',
      'profile', 'website', 'locale', 'zoneinfo', 'updated_at'],
  },
  // put the scope's claims into the id_token too, not only into userinfo
  conformIdTokenClaims: false,
  pkce: { methods: ['S256'], required: () => true },
  // seconds; explicit so oidc-provider does not print a notice per artifact type
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 3600,
    Grant: 86400,
    Session: 86400,
    RefreshToken: 86400,
    ...config.ttl,
  },
  cookies: {
    keys: config.cookie_keys ?? [crypto.randomBytes(32).toString('base64url')],
    // cookies ignore ports: name ours so they cannot be mistaken for an RP's on 127.0.0.1
    names: { session: 'oidc_session', interaction: 'oidc_interaction', resume: 'oidc_resume' },
    // default long.sameSite is 'none', which browsers refuse without Secure (plain http here)
    long: { httpOnly: true, sameSite: 'lax', signed: true },
    short: { httpOnly: true, sameSite: 'lax', signed: true },
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  loadExistingGrant,
  async renderError(ctx, out) {
    page(ctx, ctx.status || 400, 'Error', `<pre>${escapeHtml(JSON.stringify(out, null, 2))}</pre>`);
  },
});

for (const event of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error']) {
  provider.on(event, (ctx, err) => console.error(`${event}: ${err.name}: ${err.message}`
    + (err.error_description ? ` (${err.error_description})` : '')));
}

provider.use(async (ctx, next) => {
  const m = /^\/interaction\/([\w-]+)(\/login)?$/.exec(ctx.path);
  if (!m) return next();
  ctx.set('cache-control', 'no-store');
  const [, uid, isLogin] = m;
  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    if (!(err instanceof errors.SessionNotFound)) throw err;
    return page(ctx, 400, 'Error', `<p>${escapeHtml(err.error_description || err.message)}</p>`);
  }
  if (details.uid !== uid) return page(ctx, 400, 'Error', '<p>interaction mismatch</p>');
  if (details.prompt.name === 'consent') {
    // Native clients (RFC 8252 loopback redirects) always get a consent prompt from
    // oidc-provider's policy: grant what was asked, as loadExistingGrant does for the others.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    grant.addOIDCScope(String(details.params.scope ?? 'openid'));
    const grantId = await grant.save();
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId } },
      { mergeWithLastSubmission: true });
    ctx.status = 303;
    return ctx.redirect(returnTo);
  }
  if (details.prompt.name !== 'login') {
    return page(ctx, 500, 'Error', `<p>unexpected prompt ${escapeHtml(details.prompt.name)}</p>`);
  }
  const client = await provider.Client.find(details.params.client_id);
  const view = { uid, params: details.params, client };

  if (!isLogin && (ctx.method === 'GET' || ctx.method === 'HEAD')) {
    return loginPage(ctx, view, { login: details.params.login_hint || '' });
  }
  if (isLogin && ctx.method === 'POST') {
    const form = await readForm(ctx.req);
    const login = form.get('login') ?? '';
    if (!checkPassword(login, form.get('password') ?? '')) {
      return loginPage(ctx, view, { login, error: 'Invalid username or password.' });
    }
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
      login: { accountId: login },
    }, { mergeWithLastSubmission: false });
    ctx.status = 303;
    return ctx.redirect(returnTo);
  }
  ctx.status = 405;
  ctx.body = 'method not allowed';
  return undefined;
});

// oidc-provider validates static clients lazily; fail at startup instead of at first use
for (const { client_id: id } of config.clients ?? []) {
  try {
    await provider.Client.find(String(id));
  } catch (err) {
    console.error(`invalid client ${id}: ${err.error_description || err.message}`);
    process.exit(1);
  }
}

server.on('request', provider.callback());

const tmp = `${args.state}.tmp-${process.pid}`;
fs.writeFileSync(tmp, `${JSON.stringify({ issuer, pid: process.pid })}\n`);
fs.renameSync(tmp, args.state);
console.log(`oidc-provider listening, issuer ${issuer}`);

function shutdown(signal) {
  try {
    if (JSON.parse(fs.readFileSync(args.state, 'utf8')).pid === process.pid) fs.unlinkSync(args.state);
  } catch { /* already gone */ }
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
  console.log(`oidc-provider: ${signal}, stopping`);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
