"""HTTP transport: the only package (with gateway.app) that imports litestar."""
