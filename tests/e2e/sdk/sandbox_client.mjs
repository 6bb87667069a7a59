// Drives authproxy's control API with the hosted product's official SDK (langsmith's
// SandboxClient), one operation per run, asserting what the SDK returns.
//
//   AUTHPROXY_SDK_ENDPOINT=http://127.0.0.1:C/api/v2/sandboxes AUTHPROXY_SDK_KEY=apk_... \
//     node sandbox_client.mjs OP 'JSON-ARGS'
//
// Prints one JSON line: {"ok": true, "result": ...} or {"ok": false, "error": ...}, each with
// "http": every request the SDK made and the response it got (bodies cut to 2000 characters),
// so a failure shows what authproxy answered. Exit status 0 only when every assertion held.
// The raw create response is recorded to hand the box's proxy_token (returned once, and not
// kept by the SDK's Sandbox object) to the caller, which then uses the explicit proxy with it.
import assert from "node:assert/strict";

import * as sdk from "langsmith/sandbox";

const { SandboxClient } = sdk;

const http = [];
const realFetch = globalThis.fetch;
globalThis.fetch = async (url, init = {}) => {
  const entry = { method: init.method || "GET", url: String(url) };
  if (typeof init.body === "string") entry.request = init.body.slice(0, 2000);
  http.push(entry);
  const res = await realFetch(url, init);
  entry.status = res.status;
  entry.body = await res.clone().text();
  return res;
};

function lastCall(method, suffix) {
  for (let i = http.length - 1; i >= 0; i--) {
    if (http[i].method === method && new URL(http[i].url).pathname.endsWith(suffix)) return http[i];
  }
  assert.fail(`the SDK made no ${method} request ending in ${suffix}`);
}

function client(overrides = {}) {
  return new SandboxClient({
    apiEndpoint: process.env.AUTHPROXY_SDK_ENDPOINT,
    apiKey: process.env.AUTHPROXY_SDK_KEY,
    maxRetries: 0,
    ...overrides,
  });
}

function summary(sb) {
  return { id: sb.id, name: sb.name, status: sb.status, dataplane_url: sb.dataplane_url ?? null };
}

async function expectError(fn, className, includes) {
  let err;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err, `expected ${className}, but the call succeeded`);
  assert.equal(err.name, className, `expected ${className}, got ${err.name}: ${err.message}`);
  if (includes) assert.ok(err.message.includes(includes), `error message ${JSON.stringify(err.message)} lacks ${includes}`);
  return { name: err.name, message: err.message };
}

const ops = {
  // {name, proxyConfig, opaque?}: create; the proxy_config goes out as given.
  async create({ name, proxyConfig, opaque }) {
    const c = client();
    const sb = await c.createSandbox({ name, proxyConfig });
    assert.equal(sb.name, name);
    assert.equal(typeof sb.id, "string");
    assert.ok(sb.id.length > 0, "empty id");
    assert.equal(typeof sb.status, "string");
    const raw = lastCall("POST", "/boxes");
    if (opaque) assert.ok(!raw.body.includes(opaque), "the create response carries the opaque value");
    const body = JSON.parse(raw.body);
    return { ...summary(sb), proxy_token: body.proxy_token ?? null, proxy_url: body.proxy_url ?? null };
  },

  // {proxyConfig}: create without a name (the SDK leaves it out; the hosted API generates one).
  async create_unnamed({ proxyConfig }) {
    const sb = await client().createSandbox({ proxyConfig });
    assert.equal(typeof sb.name, "string");
    assert.ok(sb.name.length > 0, "no generated name");
    return summary(sb);
  },

  // {name, id, opaque?}
  async get({ name, id, opaque }) {
    const sb = await client().getSandbox(name);
    assert.equal(sb.name, name);
    if (id) assert.equal(sb.id, id);
    const raw = lastCall("GET", `/boxes/${encodeURIComponent(name)}`);
    if (opaque) assert.ok(!raw.body.includes(opaque), "GET returns the opaque value");
    return { ...summary(sb), proxy_config: JSON.parse(raw.body).proxy_config ?? null };
  },

  // {names, opaque?}: every name is listed.
  async list({ names, opaque }) {
    const all = await client().listSandboxes();
    const got = all.map((s) => s.name);
    for (const n of names) assert.ok(got.includes(n), `listSandboxes() lacks ${n}: ${JSON.stringify(got)}`);
    if (opaque) assert.ok(!lastCall("GET", "/boxes").body.includes(opaque), "the list returns the opaque value");
    return got;
  },

  // {name}
  async status({ name }) {
    const st = await client().getSandboxStatus(name);
    assert.equal(typeof st.status, "string");
    return st;
  },

  // {name}: the SDK's readiness wait (polls /status until "ready").
  async wait({ name }) {
    const sb = await client().waitForSandbox(name, { timeout: 5, pollInterval: 0.2 });
    assert.equal(sb.status, "ready");
    return summary(sb);
  },

  // {name, proxyConfig, opaque?}
  async update({ name, proxyConfig, opaque }) {
    const sb = await client().updateSandbox(name, { proxyConfig });
    assert.equal(sb.name, name);
    if (opaque) assert.ok(!lastCall("PATCH", `/boxes/${encodeURIComponent(name)}`).body.includes(opaque),
      "the PATCH response carries an opaque value");
    return summary(sb);
  },

  // {name, newName}
  async rename({ name, newName }) {
    const c = client();
    const sb = await c.updateSandbox(name, newName);
    assert.equal(sb.name, newName);
    assert.equal((await c.getSandbox(newName)).id, sb.id);
    await expectError(() => c.getSandbox(name), "LangSmithResourceNotFoundError");
    return summary(sb);
  },

  // {name}: deleted, then not found.
  async delete({ name }) {
    const c = client();
    await c.deleteSandbox(name);
    await expectError(() => c.getSandbox(name), "LangSmithResourceNotFoundError");
    await expectError(() => c.deleteSandbox(name), "LangSmithResourceNotFoundError");
    return { deleted: name };
  },

  // {name, proxyConfig, includes}: authproxy's 400 reaches the caller as the SDK's error.
  async create_invalid({ name, proxyConfig, includes }) {
    return expectError(() => client().createSandbox({ name, proxyConfig }), "LangSmithSandboxError", includes);
  },

  // {name, create?, proxyConfig?, command, timeout?, env?, expect?}: the SDK's sandbox.run()
  // (its HTTP fallback: POST {dataplane_url}/execute; the optional `ws` package is not
  // installed here), on a new box (create) or an existing one. expect: fields of the result.
  async run({ name, create, proxyConfig, command, timeout, env, expect }) {
    const c = client();
    const sb = create ? await c.createSandbox({ name, proxyConfig }) : await c.getSandbox(name);
    assert.ok(sb.dataplane_url, "the sandbox has no dataplane_url");
    const res = await sb.run(command, { timeout, env });
    const call = lastCall("POST", "/execute");
    for (const [k, v] of Object.entries(expect || {})) assert.deepEqual(res[k], v, `result.${k}`);
    return { ...res, dataplane_url: sb.dataplane_url, request: JSON.parse(call.request),
             status: call.status };
  },

  // {name, command, className, includes}: sandbox.run() fails with the SDK's error class.
  async run_error({ name, command, className, includes }) {
    const sb = await client().getSandbox(name);
    return expectError(() => sb.run(command, { timeout: 10 }), className, includes);
  },

  // {}: a wrong API key is the SDK's authentication error.
  async wrong_key() {
    return expectError(() => client({ apiKey: "apk_wrong-key-for-e2e" }).listSandboxes(),
      "LangSmithSandboxAuthenticationError");
  },
};

const [op, argText] = process.argv.slice(2);
try {
  assert.ok(ops[op], `unknown op ${op}`);
  const result = await ops[op](JSON.parse(argText || "{}"));
  process.stdout.write(JSON.stringify({ ok: true, result, http }) + "\n");
} catch (e) {
  const error = { name: e?.name, message: e?.message, stack: e?.stack };
  process.stdout.write(JSON.stringify({ ok: false, error, http }) + "\n");
  process.exitCode = 1;
}
