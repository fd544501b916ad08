// The official OpenAI Node SDK against a running Offload gateway: chat, a stream with usage, embeddings
// (its default base64 encoding, decoded by the SDK), the model list and an error. Run by
// tests/integration/test_clients.py; prints one JSON object for the test to check.
//   OFFLOAD_BASE_URL=http://127.0.0.1:8000/v1 CHAT_MODEL=smollm2 EMBED_MODEL=minilm node check.mjs
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.OFFLOAD_BASE_URL,
  apiKey: process.env.OFFLOAD_API_KEY || "unused",
  maxRetries: 0,
  timeout: 120_000,
});
const chatModel = process.env.CHAT_MODEL;
const embedModel = process.env.EMBED_MODEL;
const messages = [{ role: "user", content: "Say hello in three words." }];

const { data: chat, response } = await client.chat.completions
  .create({ model: chatModel, messages, max_tokens: 12, temperature: 0 })
  .withResponse();

const stream = await client.chat.completions.create({
  model: chatModel,
  messages,
  max_tokens: 12,
  temperature: 0,
  stream: true,
  stream_options: { include_usage: true },
});
let streamed = "";
let chunks = 0;
let usage = null;
const finishReasons = [];
for await (const chunk of stream) {
  chunks += 1;
  for (const choice of chunk.choices) {
    streamed += choice.delta?.content ?? "";
    if (choice.finish_reason) finishReasons.push(choice.finish_reason);
  }
  if (chunk.usage) usage = chunk.usage;
}

const embedded = await client.embeddings.create({ model: embedModel, input: ["hello world", "goodbye"] });
const models = [];
for await (const model of client.models.list()) models.push(model.id);

let notFound = null;
try {
  await client.chat.completions.create({ model: "no-such-model", messages });
} catch (err) {
  notFound = { status: err.status, type: err.constructor.name, code: err.code ?? null };
}

console.log(
  JSON.stringify({
    chat: {
      content: chat.choices[0].message.content,
      finish_reason: chat.choices[0].finish_reason,
      model: chat.model,
      usage: chat.usage,
      request_id: response.headers.get("x-request-id"),
      served_model: response.headers.get("x-offload-model"),
    },
    stream: { content: streamed, chunks, finish_reasons: finishReasons, usage },
    embeddings: {
      count: embedded.data.length,
      dims: embedded.data.map((d) => d.embedding.length),
      first_is_number: typeof embedded.data[0].embedding[0] === "number",
      usage: embedded.usage,
    },
    models,
    not_found: notFound,
  }),
);
