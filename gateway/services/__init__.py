"""Use cases (chat, embeddings). No litestar imports: services raise GatewayError and return data."""
