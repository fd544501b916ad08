"""OpenAI wire models (pydantic only). Nothing else in Offload defines wire types.

Request models keep unknown fields (``extra="allow"``) because vLLM accepts many extensions
(``top_k``, ``min_p``, ``repetition_penalty``, ``guided_*``...) that must reach the engine untouched.
"""
