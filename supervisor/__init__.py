"""The roxi-mp supervisor: spawns, watches, restarts and stops the role processes."""
