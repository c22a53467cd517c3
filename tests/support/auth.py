"""The API key the test servers are given (``REALTIME_API_KEYS``), and the header that presents it."""

API_KEY = "test-api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
