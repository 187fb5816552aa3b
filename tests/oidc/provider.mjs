// A real OpenID provider (panva/oidc-provider) for the end-to-end tests.
//
//   node provider.mjs [PORT]        (or OIDC_PORT=...; 0 or nothing = any free port)
//
// Environment:
//   OIDC_JWKS_PATH  a JSON file {"keys": [private JWKs]}: the signing keys (required)
//   OIDC_CLIENTS    a JSON file [client metadata...] (optional, replaces the built-in clients)
//
// Listens on 127.0.0.1 only, with the issuer http://127.0.0.1:<port>, and prints one line of
// JSON to stdout when ready: {"ready": true, "issuer": "...", "port": ..., "kids": [...]}.
//
// Machine clients use the client_credentials grant. Resource indicators (RFC 8707) are on and
// any absolute resource is accepted, so access tokens are RS256 JWTs (typ at+jwt) whose `aud`
// is the requested resource (a token requested without a resource is opaque). Every access
// token carries an `org_id` claim: the client's `org_id` metadata, "acme" by default. A
// client's `access_token_ttl` metadata (seconds) overrides the default lifetime of 300 s.
//
// The issuer is plain http on loopback: oidc-provider accepts any http(s) issuer; only
// browser flows would care (cookies), and this provider serves machine clients only.
//
// OAuth 2.0 Token Exchange (RFC 8693) is registered as an extension grant for the MCP server's
// own client (`mcp-server`), as an identity provider would offer it to a resource server that
// calls others on its callers' behalf: the subject_token must be a valid, unexpired access token
// of this provider issued to one of the client's `exchange_subject_audience` resources (the
// tests' MCP server); the requested scopes must be the client's; the answer is an RS256 JWT
// access token for the one requested `resource` (or `audience`) whose `sub`, `client_id` and
// `org_id` are the subject token's and whose `act` claim names the exchanging client. Its
// lifetime is the client's own, deliberately not capped by the subject token's, so the tests
// can see the MCP server's own cap.
//
// Every successful grant prints one JSON line to stdout, {"grant": ..., "client": ...}, which
// the tests count (token requests per grant type).
import { createPrivateKey, createPublicKey, randomUUID, sign, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const SCOPES = ['todo:read', 'todo:write', 'partner:read', 'ledger:read', 'ledger:admin'];
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
// The resource of the tests' MCP server (tests/conftest.py RESOURCE).
const MCP_RESOURCE = 'http://127.0.0.1:8000/mcp';
const DEFAULT_TTL = 300;
const DEFAULT_ORG = 'acme';

const machine = (id, secret, scope, extra = {}) => ({
  client_id: id,
  client_secret: secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
  scope,
  ...extra,
});

const BUILTIN_CLIENTS = [
  machine('mcp-rw', 'rw-secret-0123456789abcdef', 'todo:read todo:write'),
  machine('mcp-ro', 'ro-secret-0123456789abcdef', 'todo:read', {
    token_endpoint_auth_method: 'client_secret_post',
  }),
  machine('mcp-short', 'short-secret-0123456789abcdef', 'todo:read todo:write', {
    access_token_ttl: 2,
  }),
  machine('mcp-globex', 'globex-secret-0123456789abcdef', 'todo:read todo:write', {
    org_id: 'globex',
  }),
  machine('mcp-brief', 'brief-secret-0123456789abcdef', 'todo:read todo:write', {
    access_token_ttl: 5,
  }),
  // The MCP server's own client: client credentials for its downstreams, and token exchange.
  machine('mcp-server', 'server-secret-0123456789abcdef', 'partner:read ledger:read', {
    grant_types: ['client_credentials', TOKEN_EXCHANGE],
    exchange_subject_audience: [MCP_RESOURCE],
  }),
];

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

const jwksPath = process.env.OIDC_JWKS_PATH;
if (!jwksPath) fail('OIDC_JWKS_PATH is required');
const jwks = JSON.parse(readFileSync(jwksPath, 'utf8'));
if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) fail(`${jwksPath}: no keys`);
const clients = process.env.OIDC_CLIENTS
  ? JSON.parse(readFileSync(process.env.OIDC_CLIENTS, 'utf8'))
  : BUILTIN_CLIENTS;

const requestedPort = Number(process.argv[2] ?? process.env.OIDC_PORT ?? 0);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  fail(`bad port ${process.argv[2] ?? process.env.OIDC_PORT}`);
}

// Bind first, so the issuer can name the real port even when the port was 0.
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(requestedPort, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const accessTokenTTL = (client) => {
  const ttl = client?.access_token_ttl;
  return Number.isInteger(ttl) && ttl > 0 ? ttl : DEFAULT_TTL;
};

const provider = new Provider(issuer, {
  clients,
  jwks,
  scopes: SCOPES,
  extraClientMetadata: {
    properties: ['org_id', 'access_token_ttl', 'exchange_subject_audience'],
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No default resource: a token requested without one is opaque (no audience).
      // Any absolute resource is accepted (oidc-provider refuses relative ones and fragments).
      getResourceServerInfo: (_ctx, resourceIndicator, client) => ({
        scope: SCOPES.join(' '),
        audience: resourceIndicator,
        accessTokenFormat: 'jwt',
        accessTokenTTL: accessTokenTTL(client),
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (_ctx, token) => ({
    org_id: token.client?.org_id ?? DEFAULT_ORG,
  }),
  ttl: {
    ClientCredentials: (_ctx, token, client) =>
      token.resourceServer?.accessTokenTTL ?? accessTokenTTL(client),
    AccessToken: (_ctx, token, client) =>
      token.resourceServer?.accessTokenTTL ?? accessTokenTTL(client),
  },
  clientBasedCORS: () => false,
  cookies: { keys: ['oidc-provider-test-cookie-key'] },
});

// Log refused token requests to stderr: the tests print it when something goes wrong.
provider.on('grant.error', (ctx, err) => {
  process.stderr.write(`grant.error ${ctx.oidc?.client?.clientId ?? '-'}: ${err.message}\n`);
});
provider.on('server_error', (_ctx, err) => {
  process.stderr.write(`server_error: ${err.stack ?? err}\n`);
});

// --- RFC 8693 token exchange ---------------------------------------------------------------

const signingJwk = jwks.keys[0];
const signingKey = createPrivateKey({ key: signingJwk, format: 'jwk' });
const publicKeys = new Map(
  jwks.keys.map((k) => {
    const { d, p, q, dp, dq, qi, ...pub } = k;
    return [k.kid, createPublicKey({ key: pub, format: 'jwk' })];
  }),
);
const b64url = (value) => Buffer.from(value).toString('base64url');

function signAccessToken(claims) {
  const header = { alg: 'RS256', typ: 'at+jwt', kid: signingJwk.kid };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(sign('sha256', Buffer.from(input), signingKey))}`;
}

// The claims of a valid, unexpired RS256 access token of this provider, else null.
function verifiedClaims(token) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3) return null;
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    return null;
  }
  const key = header?.alg === 'RS256' ? publicKeys.get(header.kid) : undefined;
  if (!key) return null;
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  if (!verify('sha256', signed, key, Buffer.from(parts[2], 'base64url'))) return null;
  const now = Math.floor(Date.now() / 1000);
  if (claims.iss !== issuer || typeof claims.exp !== 'number' || claims.exp <= now) return null;
  return claims;
}

async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('subject_token_type must be an access token');
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens are issued');
  }
  const subject = verifiedClaims(params.subject_token);
  if (!subject) throw new errors.InvalidGrant('subject_token is invalid or expired');
  const audiences = Array.isArray(subject.aud) ? subject.aud : [subject.aud];
  const allowed = client.exchange_subject_audience ?? [];
  if (!audiences.some((aud) => allowed.includes(aud))) {
    throw new errors.InvalidGrant('subject_token was not issued to this client');
  }
  const targets = [params.resource, params.audience].flat().filter(Boolean);
  if (new Set(targets).size !== 1) {
    throw new errors.InvalidTarget('exactly one resource (or audience) is required');
  }
  const requested = (params.scope ?? '').split(' ').filter(Boolean);
  const own = new Set((client.scope ?? '').split(' '));
  const refused = requested.filter((s) => !own.has(s));
  if (refused.length) throw new errors.InvalidScope('scope not allowed', refused.join(' '));
  const now = Math.floor(Date.now() / 1000);
  const ttl = accessTokenTTL(client);
  const claims = {
    iss: issuer,
    sub: subject.sub,
    aud: targets[0],
    client_id: subject.client_id,
    org_id: subject.org_id,
    act: { sub: client.clientId },
    iat: now,
    exp: now + ttl,
    jti: randomUUID(),
  };
  if (requested.length) claims.scope = requested.join(' ');
  ctx.body = {
    access_token: signAccessToken(claims),
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: ttl,
    ...(claims.scope ? { scope: claims.scope } : {}),
  };
}

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchange,
  [
    'subject_token',
    'subject_token_type',
    'requested_token_type',
    'resource',
    'audience',
    'scope',
    'actor_token',
    'actor_token_type',
  ],
  ['resource', 'audience'],
);

provider.on('grant.success', (ctx) => {
  const line = { grant: ctx.oidc.params.grant_type, client: ctx.oidc.client?.clientId };
  process.stdout.write(`${JSON.stringify(line)}\n`);
});

handler = provider.callback();

const shutdown = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(
  `${JSON.stringify({ ready: true, issuer, port, kids: jwks.keys.map((k) => k.kid) })}\n`,
);
