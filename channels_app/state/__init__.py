"""State behind small interfaces, each with a memory and a Redis implementation: history, presence."""
