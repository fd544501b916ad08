// The embeddings tab: a text's vector dimension, and the cosine similarity of two texts.
"use strict";

import { call, errorText, servedBy } from "./api.js";

const $ = (id) => document.getElementById(id);

export function cosine(a, b) {
  let dot = 0;
  let normA = 0;
  let normB = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    normA += a[i] * a[i];
    normB += b[i] * b[i];
  }
  return dot / (Math.sqrt(normA) * Math.sqrt(normB));
}

function showError(text) {
  const node = document.createElement("p");
  node.className = "msg error";
  node.dataset.testid = "error";
  node.setAttribute("role", "alert");
  node.textContent = text;
  $("embed-messages").replaceChildren(node);
}

async function embed() {
  const texts = [$("embed-a").value.trim(), $("embed-b").value.trim()].filter(Boolean);
  const model = $("embed-model").value;
  if (!texts.length || !model) return;
  $("embed").disabled = true;
  $("embed-messages").replaceChildren();
  try {
    const response = await call("POST", "/v1/embeddings", { model, input: texts, encoding_format: "float" });
    if (!response.ok) {
      showError(await errorText(response));
      $("embed-result").hidden = true;
      return;
    }
    const vectors = (await response.json()).data.sort((x, y) => x.index - y.index).map((d) => d.embedding);
    const served = servedBy(response);
    $("embed-dim").textContent = String(vectors[0].length);
    $("embed-similarity").textContent = vectors.length > 1 ? cosine(vectors[0], vectors[1]).toFixed(4) : "—";
    $("embed-served").textContent = [served.model, served.replica && `replica ${served.replica}`]
      .filter(Boolean)
      .join(" · ");
    $("embed-preview").textContent = `[${vectors[0].slice(0, 6).map((v) => v.toFixed(4)).join(", ")}, …]`;
    $("embed-result").hidden = false;
  } catch (error) {
    showError(`The request failed: ${error.message}`);
  } finally {
    $("embed").disabled = false;
  }
}

export function setUpEmbeddings() {
  $("embed-form").addEventListener("submit", (event) => {
    event.preventDefault();
    embed();
  });
}
