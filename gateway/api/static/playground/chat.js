// The chat tab: the conversation, one streamed answer at a time, its figures, Stop.
"use strict";

import { call, errorText, servedBy, sseData, streamErrorText } from "./api.js";

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A message shown in the conversation (also used for errors that are not an answer's). */
export function showMessage(kind, text) {
  const history = $("history");
  const node = element("article", `msg ${kind}`, text);
  node.dataset.testid = kind === "error" ? "error" : `${kind}-message`;
  if (kind === "error") node.setAttribute("role", "alert");
  history.append(node);
  history.scrollTop = history.scrollHeight;
  return node;
}

/** The request body's sampling settings and extra fields, or an Error naming what is wrong. */
function settings() {
  const body = {};
  const temperature = $("temperature").value.trim();
  if (temperature !== "") body.temperature = Number(temperature);
  const maxTokens = $("max-tokens").value.trim();
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);
  const extra = $("extra").value.trim();
  if (extra) {
    let fields;
    try {
      fields = JSON.parse(extra);
    } catch (error) {
      throw new Error(`The extra request fields are not valid JSON: ${error.message}`);
    }
    if (typeof fields !== "object" || fields === null || Array.isArray(fields)) {
      throw new Error("The extra request fields must be a JSON object.");
    }
    Object.assign(body, fields);
  }
  return body;
}

/** An answer being streamed into the page, and what it measures. */
class Answer {
  constructor(model) {
    this.node = element("article", "msg assistant");
    this.node.dataset.testid = "answer";
    this.node.dataset.state = "waiting";
    this.text = document.createTextNode("");
    const body = element("div", "body");
    body.dataset.testid = "answer-text";
    body.append(this.text);
    this.meta = element("footer", "meta");
    this.meta.dataset.testid = "answer-meta";
    this.meta.textContent = `asking ${model}…`;
    this.node.append(body, this.meta);
    this.started = performance.now();
    this.first = null; // when the first token arrived
    this.last = null;
    this.chunks = 0; // content chunks: the token count when the stream gave no usage
    this.usage = null;
    this.finish = null;
    this.served = { model, replica: null };
  }

  add(content) {
    const now = performance.now();
    if (this.first === null) {
      this.first = now;
      this.node.dataset.state = "streaming";
      content = content.trimStart(); // models often start with a space
    }
    this.last = now;
    this.chunks += 1;
    this.text.appendData(content); // one DOM update per chunk: tokens show as they arrive
  }

  /** Close the answer: its state and figures (TTFT, tokens/s, tokens, who served it). */
  end(state) {
    const tokens = this.usage ? this.usage.completion_tokens : this.chunks;
    const ttft = this.first === null ? null : this.first - this.started;
    // Decoding speed: the tokens after the first, over the time they took.
    const span = this.first === null ? 0 : (this.last - this.first) / 1000;
    const rate = tokens > 1 && span > 0 ? (tokens - 1) / span : null;
    const parts = [];
    if (this.served.model) parts.push(this.served.model);
    if (this.served.replica) parts.push(`replica ${this.served.replica}`);
    if (ttft !== null) parts.push(`TTFT ${Math.round(ttft)} ms`);
    if (rate !== null) parts.push(`${rate.toFixed(1)} tokens/s`);
    parts.push(`${this.usage ? "" : "~"}${tokens} tokens`);
    if (this.finish && this.finish !== "stop") parts.push(`finish: ${this.finish}`);
    if (state === "stopped") parts.push("stopped");
    Object.assign(this.meta.dataset, {
      servedModel: this.served.model || "",
      replica: this.served.replica || "",
      ttftMs: ttft === null ? "" : ttft.toFixed(1),
      tokensPerSecond: rate === null ? "" : rate.toFixed(2),
      tokens: String(tokens),
    });
    this.meta.textContent = parts.join(" · ");
    this.node.dataset.state = state;
  }
}

/** The conversation and the one request in flight. */
export class Chat {
  constructor(modelOf) {
    this.modelOf = modelOf; // () => the model to ask: "name", "name:version" or "name:alias"
    this.messages = [];
    this.inFlight = null;
    $("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    $("stop").addEventListener("click", () => this.stop());
    $("clear").addEventListener("click", () => this.clear());
  }

  clear() {
    this.stop();
    this.messages = [];
    $("history").replaceChildren();
  }

  stop() {
    if (this.inFlight) this.inFlight.abort(); // closes the connection: the gateway aborts the engine's request
  }

  busy(on) {
    $("send").disabled = on;
    $("stop").disabled = !on;
  }

  async send() {
    const prompt = $("prompt").value.trim();
    const model = this.modelOf();
    if (!prompt || this.inFlight) return;
    if (!model) {
      showMessage("error", "No model to ask: the model list did not load (see above).");
      return;
    }
    let sampling;
    try {
      sampling = settings();
    } catch (error) {
      showMessage("error", error.message);
      return;
    }
    $("prompt").value = "";
    showMessage("user", prompt);
    const system = $("system").value.trim();
    const turn = { role: "user", content: prompt };
    const body = {
      ...sampling,
      model,
      messages: [...(system ? [{ role: "system", content: system }] : []), ...this.messages, turn],
      stream: true,
      stream_options: { include_usage: true },
    };
    const answer = new Answer(model);
    $("history").append(answer.node);
    const controller = new AbortController();
    this.inFlight = controller;
    this.busy(true);
    try {
      const state = await this.stream(body, answer, controller.signal);
      if (state === "done" || answer.chunks) {
        this.messages.push(turn, { role: "assistant", content: answer.text.data });
      }
    } finally {
      this.inFlight = null;
      this.busy(false);
      $("prompt").focus();
    }
  }

  /** Stream one answer into the page; its final state ("done", "stopped" or "error"). */
  async stream(body, answer, signal) {
    const history = $("history");
    let state = "done";
    try {
      const response = await call("POST", "/v1/chat/completions", body, signal);
      answer.served = servedBy(response);
      if (!response.ok) {
        showMessage("error", await errorText(response));
        answer.node.remove();
        return "error";
      }
      for await (const data of sseData(response.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          showMessage("error", streamErrorText(chunk.error));
          state = "error";
          continue; // the gateway ends the stream with [DONE]
        }
        if (chunk.usage) answer.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          const pinned = history.scrollTop + history.clientHeight >= history.scrollHeight - 24;
          answer.add(choice.delta.content);
          if (pinned) history.scrollTop = history.scrollHeight;
        }
        if (choice.finish_reason) answer.finish = choice.finish_reason;
      }
    } catch (error) {
      if (error.name === "AbortError") {
        state = "stopped";
      } else {
        showMessage("error", `The request failed: ${error.message}`);
        state = "error";
      }
    }
    answer.end(state);
    history.scrollTop = history.scrollHeight;
    return state;
  }
}
