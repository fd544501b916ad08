// The playground page: the key field, the model and version pickers, the tabs.
"use strict";

import { apiKey, listModels, setApiKey } from "./api.js";
import { Chat, showMessage } from "./chat.js";
import { setUpEmbeddings } from "./embeddings.js";

const $ = (id) => document.getElementById(id);
let cards = [];
let preferred = new URLSearchParams(location.search).get("model"); // the model or version last chosen

function option(value, text) {
  const node = document.createElement("option");
  node.value = value;
  node.textContent = text ?? value;
  return node;
}

/** The version picker of the chosen model: its route, each version, each alias. */
function fillVersions() {
  const name = $("model").value;
  const card = cards.find((c) => c.id === name);
  const options = [option(name, card && card.versions ? "as routed (weights, aliases)" : "the only one")];
  if (card && card.versions) {
    for (const version of card.versions) {
      const weight = cards.find((c) => c.id === version)?.weight;
      options.push(option(version, weight === undefined || weight === null ? version : `${version} (weight ${weight})`));
    }
    for (const [alias, target] of Object.entries(card.aliases || {})) {
      options.push(option(alias, `${alias} → ${target}`));
    }
  }
  $("version").replaceChildren(...options);
}

/** Fill the pickers from GET /v1/models; a `?model=NAME` in the page's address is chosen first. */
async function loadModels() {
  try {
    cards = await listModels();
  } catch (error) {
    cards = [];
    showMessage("error", `Could not list the models: ${error.message}`);
  }
  const publics = cards.filter((c) => !c.parent);
  const wanted = preferred;
  const models = publics.map((c) => option(c.id, c.versions ? `${c.id} (${c.versions.length} versions)` : c.id));
  if (wanted && !cards.some((c) => c.id === wanted)) models.push(option(wanted, `${wanted} (not listed)`));
  $("model").replaceChildren(...models);
  const parent = cards.find((c) => c.id === wanted)?.parent;
  $("model").value = parent || wanted || (models[0] && models[0].value) || "";
  fillVersions();
  if (parent) $("version").value = wanted;
  const embedChosen = $("embed-model").value;
  $("embed-model").replaceChildren(...cards.map((c) => option(c.id)));
  if (embedChosen) $("embed-model").value = embedChosen;
  document.body.dataset.models = String(cards.length); // loaded (tests wait on it)
}

function selectTab(chosen) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const on = tab === chosen;
    tab.setAttribute("aria-selected", String(on));
    $(tab.getAttribute("aria-controls")).hidden = !on;
  }
}

function start() {
  const key = $("api-key");
  key.value = apiKey();
  const useKey = () => {
    setApiKey(key.value.trim());
    loadModels();
  };
  key.addEventListener("change", useKey);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in the key field: use it now
    key.blur();
  });
  $("model").addEventListener("change", () => {
    preferred = $("model").value;
    fillVersions();
  });
  $("version").addEventListener("change", () => {
    preferred = $("version").value;
  });
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => selectTab(tab));
  }
  new Chat(() => $("version").value || $("model").value);
  setUpEmbeddings();
  loadModels();
}

start();
