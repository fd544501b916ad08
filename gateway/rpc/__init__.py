"""The gRPC door (off by default; ``OFFLOAD_SERVER__GRPC_PORT`` turns it on): chat, embeddings and
the model list over gRPC, served by the same services as the HTTP API.

The service is defined in ``offload.proto`` here; its Python code is generated at install time into
``generated/`` (``make install``, the Dockerfile) and imported only when the door is opened, so the
rest of the gateway imports without it.
"""
