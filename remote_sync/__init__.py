"""remote-sync: mirror, index and back up AI-agent session transcripts from fleets over SSH."""

__version__ = "0.1.0"
