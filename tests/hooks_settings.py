"""Settings for a live server whose project has a Django app with hooks (tests/chatlog, test_hooks.py)."""

from realtime_project.settings import *  # noqa: F403
from realtime_project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.chatlog.apps.ChatlogConfig"]
