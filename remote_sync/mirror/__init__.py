"""The mirror: planning, fetching, writing and checkpointing a host's files."""
