"""SSH transport: the connection pool, streaming remote commands, and remote snippets."""
