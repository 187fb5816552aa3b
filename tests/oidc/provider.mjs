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
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const SCOPES = ['todo:read', 'todo:write'];
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
  extraClientMetadata: { properties: ['org_id', 'access_token_ttl'] },
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
