"""The HTTP side: the server API, health, metrics, pages and their security."""
