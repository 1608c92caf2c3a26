"""The session index: per-session facts kept in the mirror's state, queried by `sessions`."""
