"""LangChain's OpenAI integration (``langchain-openai``) against a running Offload gateway.

``ChatOpenAI``: invoke, stream and batch; ``OpenAIEmbeddings``: documents and a query. Run by
tests/integration/test_clients.py with ``.venv-clients/bin/python``; prints one JSON object.
``check_embedding_ctx_length=False`` sends the texts as they are: otherwise LangChain tokenizes them
with tiktoken first, whose encodings are downloaded on first use.
"""

from __future__ import annotations

import json
import os

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

BASE_URL = os.environ["OFFLOAD_BASE_URL"]
API_KEY = os.environ.get("OFFLOAD_API_KEY") or "unused"

chat = ChatOpenAI(
    base_url=BASE_URL,
    api_key=API_KEY,
    model=os.environ["CHAT_MODEL"],
    max_tokens=12,
    temperature=0,
    max_retries=0,
    timeout=120,
    stream_usage=True,
)
messages = [SystemMessage("You are brief."), HumanMessage("Say hello in three words.")]
answer = chat.invoke(messages)
chunks = list(chat.stream(messages))
streamed = "".join(str(c.content) for c in chunks)
usage_chunks = [c.usage_metadata for c in chunks if c.usage_metadata]
batch = chat.batch(["Name a colour.", "Name a fruit."])

embeddings = OpenAIEmbeddings(
    base_url=BASE_URL,
    api_key=API_KEY,  # type: ignore[arg-type]
    model=os.environ["EMBED_MODEL"],
    check_embedding_ctx_length=False,
    max_retries=0,
    timeout=120,
)
documents = embeddings.embed_documents(["hello world", "goodbye"])
query = embeddings.embed_query("hello")

print(
    json.dumps(
        {
            "invoke": {
                "content": answer.content,
                "model": answer.response_metadata.get("model_name"),
                "finish_reason": answer.response_metadata.get("finish_reason"),
                "usage": answer.usage_metadata,
            },
            "stream": {
                "content": streamed,
                "chunks": len(chunks),
                "usage": usage_chunks[-1] if usage_chunks else None,
            },
            "batch": [str(m.content) for m in batch],
            "embed_documents": [len(v) for v in documents],
            "embed_query": len(query),
        }
    )
)
