// How an extension turns the user's settings into kai-rpc's env map.
//
// VS Code applies http.proxy, http.noProxy and http.proxyStrictSSL to its own
// requests only: processes an extension spawns do not see them. So the
// extension maps them itself, then lays the user's explicit kai.env on top.
"use strict";

/** @typedef {{ [name: string]: string | null }} EnvMap */
/** @typedef {(key: string) => unknown} SettingsReader */

/**
 * The env map for initialize, setEnvironment or didChangeConfiguration.
 * @param {SettingsReader} get reads one setting, e.g. "http.proxy"
 * @returns {EnvMap}
 */
function envFromSettings(get) {
  /** @type {EnvMap} */
  const env = {};

  const proxy = get("http.proxy");
  if (typeof proxy === "string" && proxy !== "") {
    // One proxy for both schemes, as VS Code uses it.
    env.HTTPS_PROXY = proxy;
    env.HTTP_PROXY = proxy;
  }

  const noProxy = get("http.noProxy");
  if (Array.isArray(noProxy) && noProxy.length > 0) {
    env.NO_PROXY = noProxy.map(String).join(",");
  }

  if (get("http.proxyStrictSSL") === false) {
    // Explicit, so a policy with allow_insecure_tls = false can refuse it.
    env.KAI_TLS_VERIFY = "false";
  }

  const caBundle = get("kai.caBundle");
  if (typeof caBundle === "string" && caBundle !== "") {
    env.SSL_CERT_FILE = caBundle;
  }

  const explicit = get("kai.env");
  if (explicit && typeof explicit === "object") {
    Object.assign(env, explicit);
  }
  return env;
}

module.exports = { envFromSettings };
