// A minimal extension-side client: settings -> env map -> kai-rpc serve ->
// the report the extension would show. In a real extension, `get` is
// (key) => vscode.workspace.getConfiguration().get(key), and the same env map is
// sent again with setEnvironment({ env, replace: true }) whenever
// onDidChangeConfiguration fires for "http" or "kai".
//
//   node main.js SETTINGS.json -- kai-rpc serve [--policy FILE]
//
// Prints {variables, routes, tls} as JSON on stdout.
"use strict";

const fs = require("node:fs");
const { KaiClient } = require("../../ide-contract/client/kai-client");
const { envFromSettings } = require("./settings");

/** @typedef {import("../../ide-contract/src/contract").EnvironmentReport} EnvironmentReport */

/** @param {EnvironmentReport} report */
function summary(report) {
  return {
    variables: report.variables.map(({ name, status, value, reason }) => ({
      name,
      status,
      value,
      reason,
    })),
    routes: report.proxy.routes.map(({ url, proxy, bypassedBy }) => ({ url, proxy, bypassedBy })),
    tls: { verify: report.tls.verify },
  };
}

async function main() {
  const argv = process.argv.slice(2);
  const dashes = argv.indexOf("--");
  if (dashes !== 1) {
    process.stderr.write("usage: node main.js SETTINGS.json -- SERVER COMMAND...\n");
    return 2;
  }
  /** @type {Record<string, unknown>} */
  const settings = JSON.parse(fs.readFileSync(argv[0], "utf-8"));
  const env = envFromSettings((key) => settings[key]);

  const client = new KaiClient(argv.slice(dashes + 1));
  try {
    await client.request("initialize", {
      processId: process.pid,
      capabilities: {},
      initializationOptions: { env },
    });
    await client.notify("initialized", {});
    const report = await client.waitForStatus("the worker ready", (r) => r.worker.state === "ready");
    process.stdout.write(JSON.stringify(summary(report), null, 2) + "\n");
    await client.shutdown();
  } catch (error) {
    client.kill();
    process.stderr.write(`extension-client: ${String(error)}\n`);
    return 1;
  }
  return 0;
}

main().then((code) => {
  process.exitCode = code;
});
