// What the client takes from its environment, looked up when used and never at import time,
// so that every module loads in Node. Each piece can be replaced through connect() options
// (tests pass fakes): WebSocket, fetch, clock {setTimeout, clearTimeout, now}, random,
// window, document, navigator (null: none).

function pick(options, name) {
  return name in options ? options[name] : globalThis[name];
}

/** The environment of one client; `options` are connect()'s options. */
export function platform(options = {}) {
  const clock = options.clock || {};
  return {
    createWebSocket: (url) => new (options.WebSocket || globalThis.WebSocket)(url),
    fetch: (...args) => (options.fetch || globalThis.fetch)(...args),
    setTimeout: clock.setTimeout || ((fn, ms) => globalThis.setTimeout(fn, ms)),
    clearTimeout: clock.clearTimeout || ((t) => globalThis.clearTimeout(t)),
    now: clock.now || (() => Date.now()),
    random: options.random || Math.random,
    window: pick(options, "window") || null,
    document: pick(options, "document") || null,
    navigator: pick(options, "navigator") || null,
  };
}

/** The URL relative URLs are resolved against: the document's base URL in a page. */
export function baseUrl(env) {
  const doc = env && env.document;
  if (doc && doc.baseURI) return doc.baseURI;
  const loc = globalThis.location;
  return loc && loc.href ? loc.href : "http://127.0.0.1/";
}

/** Call `fn(...args)`; a throwing app callback is logged, never breaks the client. */
export function callSafely(label, fn, ...args) {
  try {
    fn(...args);
  } catch (e) {
    console.error(`hubbub: ${label} failed`, e);
  }
}
