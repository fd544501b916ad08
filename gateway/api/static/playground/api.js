// Calls to the gateway's OpenAI API: the key, errors in OpenAI's shape, server-sent events.
"use strict";

const KEY_STORE = "offload.apiKey";

/** The API key typed into the page (kept in this tab's session storage only). */
export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

/** fetch() against the gateway with the key (as the OpenAI SDK sends it) and a JSON body. */
export function call(method, path, body, signal) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
}

/** One line saying why the gateway refused: status, OpenAI error type and message, Retry-After. */
export async function errorText(response) {
  let kind = "";
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) {
      kind = body.error.type || body.error.code || "";
      message = body.error.message || message;
    }
  } catch {
    // not JSON (a proxy's page): the status says it
  }
  const retry = response.headers.get("retry-after");
  const wait = retry ? ` (retry after ${retry} s)` : "";
  return `${response.status}${kind ? ` ${kind}` : ""}: ${message}${wait}`;
}

/** The text of an in-band error event: `data: {"error": {...}}` after the stream started. */
export function streamErrorText(error) {
  const kind = error.type || error.code || "error";
  return `stream error ${kind}: ${error.message || JSON.stringify(error)}`;
}

/**
 * The `data` of each server-sent event of a response body, as the stream delivers them (comments such
 * as `: ping` and other fields are skipped). Ends at the end of the body.
 */
export async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield data.join("\n");
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        }
      }
    }
    if (data.length) yield data.join("\n");
  } finally {
    reader.releaseLock();
  }
}

/** The models the key may use (`GET /v1/models`): public names with versions and aliases. */
export async function listModels() {
  const response = await call("GET", "/v1/models");
  if (!response.ok) throw new Error(await errorText(response));
  return (await response.json()).data;
}

/** Which model, version and replica served a response (the gateway's x-offload-* headers). */
export function servedBy(response) {
  const model = response.headers.get("x-offload-model");
  const version = response.headers.get("x-offload-version");
  const replica = response.headers.get("x-offload-replica");
  const name = model && version && !model.includes(":") ? `${model}:${version}` : model;
  return { model: name, replica };
}
