// A reference IDE-side client for kai-rpc, as an extension would write it:
// vscode-jsonrpc over the stdio of a spawned `kai-rpc serve`, typed by the
// generated contract (../src/contract.d.ts) and method table (../methods.json).
//
//   node kai-client.js [--scenario NAME] [--timeout SECONDS] -- SERVER COMMAND...
//
// Runs one scenario (default "conversation"), checks every answer, shuts the
// server down and checks that it exited with code 0. Exits 0 when all matched,
// 1 with a message naming the first mismatch, 2 on a usage error.
"use strict";

const childProcess = require("node:child_process");
const rpc = require("vscode-jsonrpc/node");
const contract = require("../methods.json");

/** @typedef {import("../src/contract").KaiRpcMethods} KaiRpcMethods */
/** @typedef {import("../src/contract").EnvironmentReport} EnvironmentReport */

/**
 * @template {keyof KaiRpcMethods} M
 * @typedef {KaiRpcMethods[M] extends { params: infer P } ? P : undefined} ParamsOf
 */
/**
 * @template {keyof KaiRpcMethods} M
 * @typedef {KaiRpcMethods[M] extends { result: infer R } ? R : never} ResultOf
 */

const ErrorCode = contract.errorCodes;

/** A difference between what the server did and what the contract promises. */
class Mismatch extends Error {}

/**
 * @param {unknown} condition
 * @param {string} message
 * @returns {asserts condition}
 */
function expect(condition, message) {
  if (!condition) {
    throw new Mismatch(message);
  }
}

/**
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {string} what
 * @returns {Promise<T>}
 */
function within(promise, ms, what) {
  /** @type {NodeJS.Timeout | undefined} */
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Mismatch(`timed out after ${ms / 1000} s waiting for ${what}`)),
      ms,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** One server process and the connection to it. */
class KaiClient {
  /**
   * @param {string[]} command the server command, e.g. ["kai-rpc", "serve"]
   * @param {{ timeoutMs?: number, env?: NodeJS.ProcessEnv }} [options]
   */
  constructor(command, options = {}) {
    this.timeoutMs = options.timeoutMs ?? 30000;
    this.child = childProcess.spawn(command[0], command.slice(1), {
      stdio: ["pipe", "pipe", "inherit"],
      env: options.env ?? process.env,
    });
    /** @type {Promise<number | null>} */
    this.exited = new Promise((resolve, reject) => {
      this.child.once("exit", (code) => resolve(code));
      this.child.once("error", reject);
    });
    this.connection = rpc.createMessageConnection(
      new rpc.StreamMessageReader(this.child.stdout),
      new rpc.StreamMessageWriter(this.child.stdin),
    );
    /** @type {EnvironmentReport[]} */
    this.statuses = [];
    /** @type {Array<{ type: number, message: string }>} */
    this.logs = [];
    /** @type {Array<() => void>} */
    this.waiters = [];
    this.on("environmentStatus", (report) => {
      this.statuses.push(report);
      this.waiters.splice(0).forEach((wake) => wake());
    });
    this.on("window/logMessage", (params) => this.logs.push(params));
    this.connection.listen();
  }

  /**
   * A handler for a notification the contract says the server sends.
   * @template {keyof KaiRpcMethods} M
   * @param {M} method
   * @param {(params: ParamsOf<M>) => void} handler
   */
  on(method, handler) {
    this.connection.onNotification(method, (params) => handler(/** @type {ParamsOf<M>} */ (params)));
  }

  /**
   * A request typed by the contract.
   * @template {keyof KaiRpcMethods} M
   * @param {M} method
   * @param {ParamsOf<M>} [params]
   * @returns {Promise<ResultOf<M>>}
   */
  request(method, params) {
    const sent =
      params === undefined
        ? this.connection.sendRequest(method)
        : this.connection.sendRequest(method, params);
    return within(/** @type {Promise<ResultOf<M>>} */ (sent), this.timeoutMs, method);
  }

  /**
   * A request the contract does not allow, to see how the server refuses it.
   * @param {string} method
   * @param {unknown} [params]
   * @returns {Promise<rpc.ResponseError<unknown>>}
   */
  async refused(method, params) {
    try {
      const result = await within(
        this.connection.sendRequest(method, params),
        this.timeoutMs,
        method,
      );
      throw new Mismatch(`${method} succeeded with ${JSON.stringify(result)}; expected an error`);
    } catch (error) {
      if (error instanceof rpc.ResponseError) {
        return error;
      }
      throw error;
    }
  }

  /**
   * A notification typed by the contract.
   * @template {keyof KaiRpcMethods} M
   * @param {M} method
   * @param {ParamsOf<M>} [params]
   */
  notify(method, params) {
    return params === undefined
      ? this.connection.sendNotification(method)
      : this.connection.sendNotification(method, params);
  }

  /**
   * The first environmentStatus since `since` (an index into this.statuses)
   * that satisfies `predicate`.
   * @param {string} what
   * @param {(report: EnvironmentReport) => boolean} predicate
   * @param {number} [since]
   * @returns {Promise<EnvironmentReport>}
   */
  waitForStatus(what, predicate, since = 0) {
    const found = () => this.statuses.slice(since).find(predicate);
    const wait = new Promise((resolve) => {
      const check = () => {
        const report = found();
        if (report) {
          resolve(report);
        } else {
          this.waiters.push(check);
        }
      };
      check();
    });
    return within(
      /** @type {Promise<EnvironmentReport>} */ (wait),
      this.timeoutMs,
      `an environmentStatus with ${what}`,
    );
  }

  /** shutdown, then exit; the server must exit with code 0. */
  async shutdown() {
    const result = await this.request("shutdown");
    expect(result === null, `shutdown answered ${JSON.stringify(result)}, not null`);
    await this.notify("exit");
    const code = await within(this.exited, this.timeoutMs, "the server to exit");
    this.connection.dispose();
    expect(code === 0, `the server exited with code ${code} after shutdown+exit, not 0`);
  }

  /** Stop the server whatever state it is in (after a failure). */
  kill() {
    this.connection.dispose();
    if (this.child.exitCode === null) {
      this.child.kill("SIGKILL");
    }
  }
}

/**
 * The entry for `name` in a report's variables.
 * @param {EnvironmentReport} report
 * @param {string} name
 */
function variable(report, name) {
  const entry = (report.variables ?? []).find((v) => v.name === name);
  expect(entry, `variable ${name} missing from the report: ${JSON.stringify(report.variables)}`);
  return entry;
}

/**
 * @param {string[]} argv
 * @returns {{ scenario: string, timeoutMs: number, command: string[] }}
 */
function parseArgs(argv) {
  const dashes = argv.indexOf("--");
  const options = dashes < 0 ? argv : argv.slice(0, dashes);
  const command = dashes < 0 ? [] : argv.slice(dashes + 1);
  let scenario = "conversation";
  let timeoutMs = 30000;
  for (let i = 0; i < options.length; i += 2) {
    if (options[i] === "--scenario") {
      scenario = options[i + 1];
    } else if (options[i] === "--timeout") {
      timeoutMs = Number(options[i + 1]) * 1000;
    } else {
      throw new Error(`unknown option ${options[i]}`);
    }
  }
  if (command.length === 0) {
    throw new Error("give the server command after --, e.g. -- kai-rpc serve");
  }
  return { scenario, timeoutMs, command };
}

async function main() {
  const { scenarios } = require("./scenarios");
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`kai-client: ${String(error)}\n`);
    process.stderr.write(`scenarios: ${Object.keys(scenarios).join(", ")}\n`);
    return 2;
  }
  const run = scenarios[args.scenario];
  if (!run) {
    process.stderr.write(
      `kai-client: no scenario ${args.scenario}; choose one of ${Object.keys(scenarios).join(", ")}\n`,
    );
    return 2;
  }
  const client = new KaiClient(args.command, { timeoutMs: args.timeoutMs });
  try {
    await run(client);
  } catch (error) {
    client.kill();
    const why = error instanceof Mismatch ? error.message : String(error);
    process.stderr.write(`kai-client: scenario ${args.scenario} failed: ${why}\n`);
    return 1;
  }
  process.stderr.write(`kai-client: scenario ${args.scenario} passed\n`);
  return 0;
}

module.exports = { KaiClient, Mismatch, expect, variable, ErrorCode };

if (require.main === module) {
  main().then((code) => {
    process.exitCode = code;
  });
}
