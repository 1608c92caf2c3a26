"""Decoding of remote byte streams: incremental JSONL framing and decoding, and the salvage
of lines whose known fields have the wrong shape."""
