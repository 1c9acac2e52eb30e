"""Background work: one lifecycle (claim, lease, heartbeat, finish, reap, re-send) for every kind of it."""
