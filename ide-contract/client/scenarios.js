// Conversations the reference client can hold with kai-rpc. Each one checks
// what the contract promises and throws a Mismatch naming the first difference.
// `make sessions` records each of them (except "conversation", the one the
// tests run live) into tests/sessions/<name>.jsonl.
"use strict";

const { ErrorCode, expect, variable } = require("./kai-client");

/** @typedef {import("./kai-client").KaiClient} KaiClient */
/** @typedef {import("../src/contract").InitializationOptions} InitializationOptions */
/** @typedef {import("../src/contract").EnvironmentReport} EnvironmentReport */

const PROXY_A = "http://proxy-user:proxy-secret@127.0.0.1:3128";
const PROXY_B = "http://proxy-b.corp.example:8080";
// A worker with extra test methods, test/crash among them. Relative paths: the
// recordings must replay from any checkout's root.
/** @type {[string, ...string[]]} */
const FAULT_WORKER = [".venv/bin/python", "-m", "tests.support.fault_worker"];

/** @param {EnvironmentReport} report */
const ready = (report) => report.worker.state === "ready";

/**
 * initialize with `options`, check the environment in the result, send
 * initialized and wait until the worker is ready.
 * @param {KaiClient} client
 * @param {InitializationOptions} options
 */
async function start(client, options) {
  const result = await client.request("initialize", {
    processId: process.pid,
    capabilities: {},
    initializationOptions: options,
  });
  const report = result.environment;
  expect(report, `initialize result has no environment: ${JSON.stringify(result)}`);
  expect(report.generation === 1, `initialize: generation ${report.generation}, not 1`);
  await client.notify("initialized", {});
  return client.waitForStatus("the worker ready", ready);
}

/**
 * The test's conversation: env map at start-up, setEnvironment, status, echo.
 * @param {KaiClient} client
 */
async function conversation(client) {
  const first = await start(client, { env: { HTTPS_PROXY: PROXY_A, NO_PROXY: "localhost" } });
  const proxy = variable(first, "HTTPS_PROXY");
  expect(proxy.status === "applied", `HTTPS_PROXY is ${proxy.status}, not applied`);
  expect(
    !String(proxy.value).includes("proxy-secret"),
    `the proxy password reached the report: ${proxy.value}`,
  );

  const seen = client.statuses.length;
  const second = await client.request("setEnvironment", { env: { HTTPS_PROXY: PROXY_B } });
  expect(second.generation === 2, `setEnvironment: generation ${second.generation}, not 2`);
  expect(variable(second, "HTTPS_PROXY").value === PROXY_B, "HTTPS_PROXY was not replaced");
  expect(variable(second, "NO_PROXY").value === "localhost", "merge lost NO_PROXY");
  await client.waitForStatus("generation 2", (r) => r.generation === 2, seen);

  const status = await client.request("getEnvironmentStatus");
  expect(status.generation === 2, `getEnvironmentStatus: generation ${status.generation}`);
  expect(ready(status), `getEnvironmentStatus: worker ${status.worker.state}, not ready`);

  const payload = { hello: "world", nested: [1, 2, { three: 3 }] };
  const echoed = await client.request("echo", payload);
  expect(
    JSON.stringify(echoed) === JSON.stringify(payload),
    `echo answered ${JSON.stringify(echoed)}, not ${JSON.stringify(payload)}`,
  );
  await client.shutdown();
}

/**
 * Plain start-up and shutdown, with no env map at all.
 * @param {KaiClient} client
 */
async function startup(client) {
  const report = await start(client, {});
  expect(report.generation === 1, `generation ${report.generation}, not 1`);
  await client.shutdown();
}

/**
 * The proxy changes three ways: setEnvironment (merge), the settings
 * notification, setEnvironment with replace; then null unsets it.
 * @param {KaiClient} client
 */
async function proxyChange(client) {
  await start(client, { env: { HTTPS_PROXY: PROXY_A } });

  const merged = await client.request("setEnvironment", {
    env: { HTTPS_PROXY: PROXY_B, NO_PROXY: "localhost,.corp.example" },
  });
  const route = merged.proxy.routes[0];
  expect(route && route.proxy === PROXY_B, `route after merge: ${JSON.stringify(route)}`);

  const seen = client.statuses.length;
  await client.notify("workspace/didChangeConfiguration", {
    settings: { kai: { env: { HTTP_PROXY: PROXY_B } } },
  });
  const third = await client.waitForStatus("generation 3", (r) => r.generation === 3, seen);
  expect(variable(third, "HTTP_PROXY").status === "applied", "settings did not apply");

  const replaced = await client.request("setEnvironment", {
    env: { HTTPS_PROXY: PROXY_A },
    replace: true,
  });
  const names = replaced.variables.filter((v) => v.source === "ide").map((v) => v.name);
  expect(!names.includes("NO_PROXY"), `replace kept NO_PROXY: ${names}`);

  const unset = await client.request("setEnvironment", { env: { HTTPS_PROXY: null } });
  const gone = unset.proxy.routes[0];
  expect(gone && gone.proxy === null, `HTTPS_PROXY=null left a proxy: ${JSON.stringify(gone)}`);
  await client.shutdown();
}

/**
 * Keys the built-in policy refuses: denied names, a malformed name, a value that
 * is not a string. The rest of the map still applies.
 * @param {KaiClient} client
 */
async function rejectedKey(client) {
  const report = await start(client, {
    env: { LD_PRELOAD: "/tmp/evil.so", NO_PROXY: "localhost" },
  });
  const denied = variable(report, "LD_PRELOAD");
  expect(denied.status === "rejected" && denied.reason, `LD_PRELOAD: ${JSON.stringify(denied)}`);
  expect(variable(report, "NO_PROXY").status === "applied", "NO_PROXY was not applied");

  const later = await client.request("setEnvironment", {
    // Deliberately off-contract values: the bridge rejects them key by key.
    env: /** @type {any} */ ({
      HTTPS_PROXY: 8080,
      PYTHONPATH: "/tmp/shadow",
      "BAD=NAME": "x",
      OPENAI_PROXY: PROXY_B,
    }),
  });
  for (const name of ["HTTPS_PROXY", "PYTHONPATH", "BAD=NAME"]) {
    const entry = variable(later, name);
    expect(entry.status === "rejected", `${name}: ${JSON.stringify(entry)}`);
  }
  expect(variable(later, "OPENAI_PROXY").status === "applied", "OPENAI_PROXY not applied");
  await client.shutdown();
}

/**
 * A worker crashes while it holds a request: the request fails with
 * WORKER_LOST, the worker is restarted and serves again.
 * @param {KaiClient} client
 */
async function workerCrash(client) {
  await start(client, { worker: { command: FAULT_WORKER } });
  const seen = client.statuses.length;
  const lost = await client.refused("test/crash", {});
  expect(lost.code === ErrorCode.WORKER_LOST, `test/crash: code ${lost.code}, not WORKER_LOST`);

  const back = await client.waitForStatus(
    "a restarted worker ready",
    (r) => ready(r) && r.worker.restarts === 1,
    seen,
  );
  expect(back.generation === 1, `a restart changed the generation to ${back.generation}`);
  const echoed = await client.request("echo", { after: "restart" });
  expect(JSON.stringify(echoed) === '{"after":"restart"}', `echo: ${JSON.stringify(echoed)}`);
  await client.shutdown();
}

/**
 * Requests the bridge refuses: before initialize, wrong params, an unknown
 * method; the connection stays usable after each.
 * @param {KaiClient} client
 */
async function badRequest(client) {
  const early = await client.refused("getEnvironmentStatus");
  expect(
    early.code === ErrorCode.SERVER_NOT_INITIALIZED,
    `before initialize: code ${early.code}, not SERVER_NOT_INITIALIZED`,
  );
  await start(client, {});

  const shape = await client.refused("setEnvironment", { env: "HTTPS_PROXY=x" });
  expect(shape.code === ErrorCode.INVALID_PARAMS, `env as string: code ${shape.code}`);
  const flag = await client.refused("setEnvironment", { env: {}, replace: "yes" });
  expect(flag.code === ErrorCode.INVALID_PARAMS, `replace as string: code ${flag.code}`);
  const unknown = await client.refused("kai/noSuchMethod", {});
  expect(unknown.code === ErrorCode.METHOD_NOT_FOUND, `unknown method: code ${unknown.code}`);

  const status = await client.request("getEnvironmentStatus");
  expect(status.generation === 1, `refused requests changed generation to ${status.generation}`);
  await client.shutdown();
}

/** @type {Record<string, (client: KaiClient) => Promise<void>>} */
const scenarios = {
  conversation,
  startup,
  "proxy-change": proxyChange,
  "rejected-key": rejectedKey,
  "worker-crash": workerCrash,
  "bad-request": badRequest,
};

module.exports = { scenarios };
