"""LlamaIndex's OpenAI-compatible classes against a running Offload gateway.

``OpenAILike`` (llama-index-llms-openai-like): complete, chat, stream_chat; ``OpenAILikeEmbedding``
(llama-index-embeddings-openai-like): a text and a query. Run by tests/integration/test_clients.py with
``.venv-clients/bin/python``; prints one JSON object.
"""

from __future__ import annotations

import json
import os

from llama_index.core.llms import ChatMessage
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from llama_index.llms.openai_like import OpenAILike

BASE_URL = os.environ["OFFLOAD_BASE_URL"]
API_KEY = os.environ.get("OFFLOAD_API_KEY") or "unused"

llm = OpenAILike(
    api_base=BASE_URL,
    api_key=API_KEY,
    model=os.environ["CHAT_MODEL"],
    is_chat_model=True,
    context_window=4096,
    max_tokens=12,
    temperature=0,
    max_retries=0,
    timeout=120,
)
completion = llm.complete("Say hello in three words.")
messages = [
    ChatMessage(role="system", content="You are brief."),
    ChatMessage(role="user", content="Name a colour."),
]
reply = llm.chat(messages)
deltas = [r.delta or "" for r in llm.stream_chat(messages)]

embedder = OpenAILikeEmbedding(
    api_base=BASE_URL,
    api_key=API_KEY,
    model_name=os.environ["EMBED_MODEL"],
    max_retries=0,
    timeout=120,
)
text_vector = embedder.get_text_embedding("hello world")
query_vector = embedder.get_query_embedding("hello")

print(
    json.dumps(
        {
            "complete": completion.text,
            "chat": {"role": str(reply.message.role.value), "content": reply.message.content},
            "stream_chat": {"content": "".join(deltas), "deltas": len([d for d in deltas if d])},
            "embedding": len(text_vector),
            "query_embedding": len(query_vector),
        }
    )
)
