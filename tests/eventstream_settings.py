"""Settings for a live server that also serves ``tests/eventstream_urls.py``: a view written for
django-eventstream, which calls ``send_event`` in the serving process (test_eventstream.py)."""

from realtime_project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.eventstream_urls"
