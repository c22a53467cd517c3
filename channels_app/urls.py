"""HTTP routes of the service served by Django views."""

urlpatterns: list = []
