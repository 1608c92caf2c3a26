"""Decoding of remote byte streams: incremental JSONL framing and multi-file stream frames."""
